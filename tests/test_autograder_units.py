"""autograder without kernels: manifests, oracles, comparison, partial credit, hints, the capture protocol,
file checks, escaping."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from autograder import capture, check, manifests
from autograder.capture import read_capture, run_case, to_plain
from autograder.compare import clamp_score, diagnose, grade_exercise, mismatch
from autograder.grade import _merge, grade_notebook, identify, read_notebook, record_names
from autograder.oracles import ORACLES, oracle
from autograder.report import csv_cell, feedback_markdown, md
from autograder.selfcheck import SelfCheckFailed, reference

ALL_EXERCISES = [ex for a in manifests.ASSIGNMENTS.values() for ex in a.exercises]


# ----------------------------------------------------------------------------- manifests

@pytest.mark.parametrize("exercise", ALL_EXERCISES, ids=lambda ex: ex.id)
def test_cases_are_seeded_plain_data_with_finite_references(exercise):
    for case in exercise.cases:
        first, second = exercise.inputs(case), exercise.inputs(case)
        assert first.keys() == second.keys()
        for key, value in first.items():
            array = np.asarray(value)
            assert array.dtype.kind in "biuf", f"{exercise.id}/{case.name}/{key} is not plain numbers"
            assert np.array_equal(array, np.asarray(second[key]))
        if oracle(exercise.id).reference is None:  # a random exercise: its judge is tested in test_pretraining.py
            continue
        expected = oracle(exercise.id).reference(first)
        assert expected, f"{exercise.id}: the reference returned nothing"
        for value in expected.values():
            assert np.isfinite(np.asarray(value.detach() if hasattr(value, "detach") else value, dtype=float)).all()


def test_hidden_cases_follow_the_instructors_secret(monkeypatch):
    exercise = manifests.exercise("attention.sdpa")
    hidden = next(case for case in exercise.cases if case.hidden)
    public = exercise.public_cases()[0]
    default_hidden, default_public = exercise.inputs(hidden), exercise.inputs(public)
    monkeypatch.setenv("AUTOGRADER_SECRET", "another course")
    assert not np.array_equal(exercise.inputs(hidden)["q"], default_hidden["q"])
    assert np.array_equal(exercise.inputs(public)["q"], default_public["q"])


@pytest.mark.parametrize("exercise", ALL_EXERCISES, ids=lambda ex: ex.id)
def test_every_detector_can_fire_on_a_public_case(exercise):
    """A detector identical to the reference on every public case would never give its hint
    (the reference is compared first, so a right answer never gets a wrong hint)."""
    for detector in oracle(exercise.id).detectors:
        fired = False
        for case in exercise.public_cases():
            inputs = exercise.inputs(case)
            wrong = {k: np.asarray(v.detach() if hasattr(v, "detach") else v) for k, v in detector.produce(inputs).items()}
            passed, _, hint = diagnose(exercise, inputs, wrong)
            fired |= not passed and hint is not None
        assert fired, f"{exercise.id}: detector {detector.name!r} never fires on a public case"


def test_every_exercise_has_an_oracle_and_every_oracle_an_exercise():
    assert set(ORACLES) == {ex.id for ex in ALL_EXERCISES}


@pytest.mark.parametrize("name", sorted(manifests.ASSIGNMENTS))
def test_the_graders_cells_run_in_a_bare_namespace_and_grade_the_references_full_marks(name, tmp_path):
    """The public and hidden cells, exec'd where only the learner's functions are defined (here: the
    course's references), write captures that the trusted reader accepts and that score full marks:
    the cells carry everything they need, and no ``call`` imports a reference."""
    assignment = manifests.assignment(name)
    namespace = {ex.callable: reference(ex.id) for ex in assignment.exercises if ex.reference_impl}
    graded = [ex for ex in assignment.exercises if ex.callable in namespace]
    assert graded, name
    reports, arrays = [], {}
    for hidden in (False, True):
        path = str(tmp_path / f"{hidden}.bin")
        exec(compile(capture.cell_source(graded, hidden, path, "the nonce"), "cell", "exec"), namespace)
        expected = {ex.id: {c.name for c in ex.cases if c.hidden == hidden} for ex in graded}
        data = open(path, "rb").read()
        assert read_capture(data, "another run", expected) == (None, {})
        report, phase_arrays = read_capture(data, "the nonce", expected)
        reports.append(report)
        arrays.update(phase_arrays)
    for ex in graded:
        merged = _merge(ex, *reports)
        result = grade_exercise(ex, merged, arrays)
        assert result.status == "passed", (ex.id, result.message)


def test_no_call_imports_a_reference_module():
    references = {module for a in manifests.ASSIGNMENTS.values() for module in a.references}
    for ex in ALL_EXERCISES:
        source = __import__("inspect").getsource(ex.call)
        assert not [m for m in references if m in source], ex.id


# ----------------------------------------------------------------------------- the capture, read as untrusted bytes

def _capture_bytes(header: dict, body: bytes = b"") -> bytes:
    data = json.dumps(header).encode()
    return capture.MAGIC + len(data).to_bytes(8, "little") + data + body


EXPECTED = {"attention.causal_mask": {"T=2"}}


@pytest.mark.parametrize("data", [
    None, b"", b"not a capture", capture.MAGIC + (10**9).to_bytes(8, "little"),        # a header that is not there
    _capture_bytes({"nonce": "wrong", "report": {}, "arrays": {}}),
    _capture_bytes({"nonce": "n", "report": [], "arrays": []})[:-3],                    # cut short
    capture.MAGIC + (5).to_bytes(8, "little") + b"[[[[[" ,                              # not JSON
    capture.MAGIC + (200_001).to_bytes(8, "little") + b"[" * 100_000 + b"]" * 100_000 + b"x",  # nested deeply
])
def test_read_capture_refuses_what_is_not_this_runs_capture(data):
    report, arrays = read_capture(data, "n", EXPECTED)
    assert arrays == {} and (report is None or report == {})


def test_read_capture_checks_every_declared_array_against_the_bytes():
    body = np.arange(4, dtype=np.int64).tobytes()
    arrays = {
        "attention.causal_mask/T=2/mask": ["int64", [2, 2], 0],              # fits: kept
        "attention.causal_mask/T=2/huge": ["float32", [1 << 20, 1 << 20], 0],  # declared far beyond the bytes
        "attention.causal_mask/T=2/past": ["int64", [4], 8],                  # runs past the end
        "attention.causal_mask/T=2/obj": ["object", [1], 0],                  # not a plain dtype
        "attention.causal_mask/T=2/neg": ["int64", [-1], 0],
        "attention.causal_mask/T=99/mask": ["int64", [1], 0],                 # a case this phase does not have
        "attention.sdpa/2-D, like the seed/output": ["int64", [1], 0],        # an exercise not expected
        "no-slashes": ["int64", [1], 0],
    }
    report, got = read_capture(_capture_bytes({"nonce": "n", "report": {"attention.causal_mask": {"cases": {
        "T=2": {"status": "ok", "message": "x" * 10_000, "evil": "y"}}}}, "arrays": arrays}, body), "n", EXPECTED)
    assert list(got) == ["attention.causal_mask/T=2/mask"]
    assert got["attention.causal_mask/T=2/mask"].tolist() == [[0, 1], [2, 3]]
    assert set(report["attention.causal_mask"]["cases"]["T=2"]) == {"status", "message"}
    assert len(report["attention.causal_mask"]["cases"]["T=2"]["message"]) <= 2 * capture.MAX_MESSAGE


# ----------------------------------------------------------------------------- comparison

def test_mismatch_checks_shape_dtype_finiteness_and_values():
    want = {"y": np.array([1.0, 2.0], dtype=np.float32)}
    assert mismatch(want, {"y": np.array([1.0, 2.0], dtype=np.float32)}, 1e-5, 1e-4) is None
    assert "no `y`" in mismatch(want, {}, 1e-5, 1e-4)
    assert "shape" in mismatch(want, {"y": np.zeros(3, np.float32)}, 1e-5, 1e-4)
    assert "dtype float64" in mismatch(want, {"y": np.array([1.0, 2.0])}, 1e-5, 1e-4)
    assert "NaN" in mismatch(want, {"y": np.array([1.0, np.nan], dtype=np.float32)}, 1e-5, 1e-4)
    assert "max abs difference 0.5" in mismatch(want, {"y": np.array([1.0, 2.5], dtype=np.float32)}, 1e-5, 1e-4)
    assert "bool" in mismatch({"m": np.ones(2, bool)}, {"m": np.ones(2, np.int64)}, 0, 0)
    assert "differs in 1 of 2" in mismatch({"m": np.ones(2, bool)}, {"m": np.array([True, False])}, 0, 0)


def test_clamp_score():
    assert clamp_score(float("nan"), 3) == 0.0
    assert clamp_score(5.0, 3) == 3.0
    assert clamp_score(-1.0, 3) == 0.0


def _capture_for(exercise, fn):
    """What the kernel side would capture for ``fn`` (report + arrays), computed in-process."""
    report, arrays = {"cases": {}}, {}
    for case in exercise.cases:
        outputs, case_report = run_case(fn, exercise.call, exercise.inputs(case))
        report["cases"][case.name] = case_report
        arrays.update({f"{exercise.id}/{case.name}/{k}": v for k, v in outputs.items()})
    return report, arrays


def _sdpa(scale=True, mask_after=False):
    def fn(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
        if mask is not None and not mask_after:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, -1)
        if mask is not None and mask_after:
            weights = weights * mask
        return weights @ v, weights
    return fn


def test_correct_answer_scores_full_marks():
    exercise = manifests.exercise("attention.sdpa")
    result = grade_exercise(exercise, *_capture_for(exercise, _sdpa()))
    assert (result.status, result.score) == ("passed", 3.0)


def test_unscaled_attention_gets_the_scale_hint():
    exercise = manifests.exercise("attention.sdpa")
    result = grade_exercise(exercise, *_capture_for(exercise, _sdpa(scale=False)))
    assert result.status == "failed" and result.score == 0
    assert "sqrt(d)" in result.message


def test_mask_after_softmax_gets_partial_credit_and_its_hint():
    exercise = manifests.exercise("attention.sdpa")
    result = grade_exercise(exercise, *_capture_for(exercise, _sdpa(mask_after=True)))
    unmasked = sum("mask" not in case.params for case in exercise.cases)
    assert result.score == pytest.approx(3 * unmasked / len(exercise.cases), abs=1e-3)
    assert "before* the softmax" in result.message


def test_not_implemented_is_missing_and_says_what_to_do():
    exercise = manifests.exercise("attention.causal_mask")

    def stub(T):
        raise NotImplementedError()

    result = grade_exercise(exercise, *_capture_for(exercise, stub))
    assert result.status == "missing" and result.score == 0
    assert "NotImplementedError" in result.message


def test_an_exception_is_an_error_with_the_learners_message():
    exercise = manifests.exercise("attention.causal_mask")
    result = grade_exercise(exercise, *_capture_for(exercise, lambda T: 1 / 0))
    assert result.status == "error" and "ZeroDivisionError" in result.message


def test_missing_callable_and_forged_capture():
    exercise = manifests.exercise("attention.causal_mask")
    assert grade_exercise(exercise, {"status": "missing"}, {}).status == "missing"
    assert grade_exercise(exercise, None, {}).status == "missing"
    # A report that claims success but carries no arrays earns nothing.
    forged = {"cases": {case.name: {"status": "ok"} for case in exercise.cases}}
    assert grade_exercise(exercise, forged, {}).score == 0
    # Arrays of the wrong type (strings) are refused before any comparison.
    result = grade_exercise(exercise, forged, {f"{exercise.id}/{c.name}/mask": np.array(["True"]) for c in exercise.cases})
    assert result.score == 0


def test_hidden_cases_are_not_described():
    exercise = manifests.exercise("attention.causal_mask")
    result = grade_exercise(exercise, *_capture_for(exercise, lambda T: torch.ones(T, T, dtype=torch.bool)))
    hidden_messages = [c.message for c in result.cases if c.hidden]
    assert hidden_messages and all(m.startswith("hidden case") for m in hidden_messages)
    assert all("T=33" not in m for m in hidden_messages)


# ----------------------------------------------------------------------------- kernel half

def test_to_plain_refuses_objects_that_could_lie():
    class Liar:
        def __eq__(self, other):
            return True

        def __float__(self):
            return 1.0

    class Sneaky(torch.Tensor):
        pass

    assert to_plain(Liar())[0] is None
    assert to_plain(torch.zeros(2).as_subclass(Sneaky))[0] is None
    assert to_plain([1, 2])[0] is None
    array, type_name, problem = to_plain(torch.ones(2, dtype=torch.bfloat16))
    assert problem is None and array.dtype == np.float32
    assert to_plain(np.array(["a"]))[0] is None


def test_self_check_prints_cases_and_raises_on_failure(capsys, monkeypatch):
    monkeypatch.delenv("LLM_COURSE_GRADING", raising=False)
    check("attention.sdpa", _sdpa())
    assert "all 4 public cases passed" in capsys.readouterr().out
    with pytest.raises(SelfCheckFailed):
        check("attention.sdpa", _sdpa(scale=False))
    out = capsys.readouterr()
    assert out.out.count("Hint:") == 1 and out.err == ""   # one hint, however many cases it explains


def test_an_unattempted_exercise_does_not_stop_run_all_but_scores_zero_under_nbgrader(capsys, monkeypatch):
    def stub(T):
        raise NotImplementedError()

    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert check("attention.causal_mask", stub) is None
    assert "not implemented yet" in capsys.readouterr().out
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(SelfCheckFailed):
        check("attention.causal_mask", stub)


def test_use_falls_back_to_the_course_version_with_a_notice(capsys, monkeypatch):
    from autograder import use
    from utils.attention import causal_mask

    def stub(T):
        raise NotImplementedError()

    def mine(T):
        return torch.ones(T, T).tril().bool()

    monkeypatch.delenv("LLM_COURSE_GRADING", raising=False)
    assert use("attention.causal_mask", mine) is mine and capsys.readouterr().out == ""
    assert use("attention.causal_mask", stub) is causal_mask
    assert "utils.attention.causal_mask" in capsys.readouterr().out
    monkeypatch.setenv("LLM_COURSE_GRADING", "1")   # while graded: the learner's own, always
    assert use("attention.causal_mask", stub) is stub


# ----------------------------------------------------------------------------- what reaches people

def test_feedback_escapes_everything_that_came_from_a_submission():
    record = {"notebook": "01_attention", "score": 0, "max_score": 10, "status": "graded", "seconds": 1.0,
              "message": "x\n# 01_attention: 10 / 10\n<script>alert(1)</script>",
              "exercises": [{"id": "attention.sdpa", "status": "failed", "score": 0, "max_score": 3,
                             "message": "| fake | row |\n| ✓ attention.sdpa | passed | 3/3 | [link](http://x) `code`"}],
              "cell_errors": [{"cell": 3, "first_line": "# heading", "error": "ValueError: <img src=x>"}]}
    text = feedback_markdown(record)
    lines = text.splitlines()
    assert lines[0] == "# 01\\_attention: 0 / 10"       # the name escaped too (an unknown one is a file name)
    assert not any(line.startswith("# ") for line in lines[1:])
    assert "<script>" not in text and "<img" not in text and "](http" not in text
    table_rows = [line for line in lines if line.startswith("| ")]
    assert len(table_rows) == 2          # the header and one exercise: no row injected
    assert md("a|b") == "a\\|b"


def test_csv_cells_never_start_a_formula():
    assert [csv_cell(t) for t in ("=1+1", "+1", "-1", "@SUM(A1)", "ok")] == ["'=1+1", "'+1", "'-1", "'@SUM(A1)", "ok"]


def test_records_of_submissions_with_the_same_name_do_not_overwrite_each_other():
    from pathlib import Path

    paths = [Path("sub/alice/01_attention.ipynb"), Path("sub/bob/01_attention.ipynb"), Path("other.ipynb")]
    names = record_names(paths)
    assert len(set(names.values())) == 3 and names[paths[0]] == "sub__alice__01_attention"


# ----------------------------------------------------------------------------- broken files (no kernel)

@pytest.mark.parametrize("content, expected", [
    (b"{not json", "not valid notebook JSON"),
    (b"", "empty"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (json.dumps({"nbformat": 3, "nbformat_minor": 0, "worksheets": [], "metadata": {}}).encode(), "version 3"),
    (json.dumps({"hello": "world"}).encode(), "not a Jupyter notebook"),
    (json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode(), "no code cells"),
])
def test_broken_files_are_invalid_with_a_message(tmp_path, content, expected):
    path = tmp_path / "01_attention.ipynb"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        read_notebook(path)
    record = grade_notebook(path)
    assert record["status"] == "invalid" and expected.split()[0] in record["message"]
    assert record["score"] == 0 and record["max_score"] == 10
    assert {e["status"] for e in record["exercises"]} == {"missing"}


def test_unknown_notebook_name_is_invalid(tmp_path):
    path = tmp_path / "homework.ipynb"
    path.write_text("{}")
    with pytest.raises(KeyError, match="--assignment"):
        identify(path)
    assert grade_notebook(path)["status"] == "invalid"
    assert identify(path, "01_attention").notebook == "01_attention"


def test_a_grader_failure_is_a_record_not_a_crash(tmp_path, monkeypatch):
    import autograder.grade as grade_module

    def broken_run(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(grade_module, "run", broken_run)
    path = tmp_path / "01_attention.ipynb"
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                                "cells": [{"cell_type": "code", "source": "x = 1", "metadata": {},
                                           "outputs": [], "execution_count": None, "id": "a"}]}))
    record = grade_notebook(path)
    assert record["status"] == "crashed" and "No space left" in record["message"]


def test_grade_many_keeps_the_order_and_reports_each_notebook_as_it_finishes(tmp_path):
    """Two workers, bad files (no kernel needed): every job gets its own record, in the order given."""
    from autograder.classgrade import grade_many

    broken = tmp_path / "01_attention.ipynb"
    broken.write_text("{not json", encoding="utf-8")
    empty = tmp_path / "02_transformer.ipynb"
    empty.write_bytes(b"")
    seen = []
    records = grade_many([dict(path=broken), dict(path=empty), dict(path=tmp_path / "missing.ipynb", assignment="00_setup")],
                         workers=2, on_done=seen.append)
    assert [r["notebook"] for r in records] == ["01_attention", "02_transformer", "00_setup"]
    assert [r["status"] for r in records] == ["invalid"] * 3
    assert sorted(r["notebook"] for r in seen) == sorted(r["notebook"] for r in records)


def test_runs_graded_at_once_share_the_cores_out():
    from autograder.execute import sandbox_env
    from autograder.sandbox import threads_per_run

    assert threads_per_run(1) == (os.cpu_count() or 1)
    assert threads_per_run(64) == 1
    env = sandbox_env(Path("/cache"), threads=1)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in sandbox_env(Path("/cache"))
