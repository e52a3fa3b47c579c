"""`make progress` (autograder/progress.py): the table, the next step, the cache, the time estimate.

No kernel starts here: ``grade_notebook`` is replaced by an in-process grader that calls the learner's
functions on every case (public and hidden) with ``capture.run_case`` and scores them with the real
``compare.grade_exercise`` and ``grade._record``, so the records have the grader's real shape and
messages. The sandboxed grading itself is tested in test_notebooks.py and test_browser.py.
"""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from autograder import manifests, progress
from autograder.capture import run_case
from autograder.compare import grade_exercise
from autograder.grade import _record

from conftest import RELEASE


def not_implemented(*args, **kwargs):
    raise NotImplementedError()


def unscaled_sdpa(q, k, v, mask=None):  # the known mistake: no 1/sqrt(d)
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


LEARNER = {"attention.sdpa": unscaled_sdpa, "attention.causal_mask": causal_mask}


def in_process_grade(calls):
    def grade(path, assignment=None, **_):
        calls.append(assignment)
        spec = manifests.assignment(assignment)
        results = []
        for exercise in spec.exercises:
            fn = LEARNER.get(exercise.id, not_implemented)
            cases, arrays = {}, {}
            for case in exercise.cases:
                outputs, report = run_case(fn, exercise.call, exercise.inputs(case))
                cases[case.name] = report
                arrays.update({f"{exercise.id}/{case.name}/{key}": value for key, value in outputs.items()})
            results.append(grade_exercise(exercise, {"cases": cases}, arrays))
        return _record(spec.notebook, path, "graded", 12.5, "", results, spec.max_score)
    return grade


@pytest.fixture
def learner(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("00_setup", "01_attention"):
        shutil.copyfile(RELEASE / f"{name}.ipynb", notebooks / f"{name}.ipynb")
    calls = []
    monkeypatch.setattr(progress, "grade_notebook", in_process_grade(calls))
    return notebooks, tmp_path / "build", calls


def run(notebooks, build, **kwargs):
    lines = []
    records = progress.progress(notebooks, build, log=lines.append, **kwargs)
    return records, "\n".join(lines)


def test_the_table_says_what_is_done_what_fails_and_what_to_do_next(learner):
    notebooks, build, calls = learner
    records, text = run(notebooks, build)
    assert sorted(calls) == ["00_setup", "01_attention"]
    assert "This takes about 40 s (an estimate" in text  # ESTIMATE_S, before anything was measured
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(" " * 17)}
    assert "1/1" in rows["causal_mask"] and "✓ done" in rows["causal_mask"]
    sdpa = rows["scaled_dot_product_attention"]
    n_cases = len(manifests.exercise("attention.sdpa").cases)
    assert f"✗ 0/{n_cases} cases pass" in sdpa and "Hint: your scores are not divided by sqrt(d)" in sdpa
    assert "· not started" in rows["padding_mask"] and "raise NotImplementedError()" in rows["padding_mask"]
    assert "02_transformer   (notebook)" in text and "is not there" in text
    assert f"Total: 1/{sum(a.max_score for a in manifests.ASSIGNMENTS.values()):g}." in text
    assert "Next: 00_setup: write `next_token_probs`" in text
    page = (build / "progress.html").read_text()
    assert "<table>" in page and "your scores are not divided by sqrt(d): use q @ k.transpose(-2, -1) / math.sqrt(d)" in page
    assert records["02_transformer"] is None and records["01_attention"]["score"] == 1


def test_unchanged_notebooks_are_not_graded_again_and_the_estimate_is_measured(learner):
    notebooks, build, calls = learner
    first = run(notebooks, build)[1]
    calls.clear()
    _, again = run(notebooks, build)
    assert calls == [] and "Grading" not in again
    assert "Unchanged since their last grade, not graded again: 00_setup, 01_attention." in again
    assert again.split("notebook ", 1)[1] == first.split("notebook ", 1)[1]  # the same table, from the cache

    path = notebooks / "01_attention.ipynb"
    path.write_text(path.read_text() + " ")
    _, changed = run(notebooks, build)
    assert calls == ["01_attention"]
    assert "Grading 1 notebook(s)" in changed and "about 12 s (as measured here last time)" in changed

    calls.clear()
    run(notebooks, build, force=True)
    assert sorted(calls) == ["00_setup", "01_attention"]


def test_a_grader_update_grades_everything_again(learner, monkeypatch):
    notebooks, build, calls = learner
    run(notebooks, build)
    calls.clear()
    monkeypatch.setattr(progress, "grader_fingerprint", lambda: "another grader")
    run(notebooks, build)
    assert sorted(calls) == ["00_setup", "01_attention"]


def test_next_step_is_the_first_exercise_not_done_in_course_order():
    spec = manifests.assignment("01_attention")
    passed = {"id": "", "status": "passed", "score": 1, "max_score": 1, "message": "all 3 cases passed"}
    records = {"00_setup": {"status": "graded", "exercises": [dict(passed, id=e.id) for e in
                                                              manifests.assignment("00_setup").exercises]},
               "01_attention": {"status": "graded", "exercises": [
                   dict(passed, id=spec.exercises[0].id),
                   {"id": spec.exercises[1].id, "status": "failed", "score": 0.5, "max_score": 1,
                    "message": "1/2 cases passed. hidden case 1: wrong values"}]}}
    step = progress.next_step(["00_setup", "01_attention"], records)
    assert step == f"01_attention: fix `{spec.exercises[1].callable}`: hidden case 1: wrong values"
    assert math.isclose(progress.estimate(["01_attention", "99_new"], {"notebooks": {"01_attention": {"seconds": 7}}})[0],
                        7 + progress.DEFAULT_ESTIMATE_S)
