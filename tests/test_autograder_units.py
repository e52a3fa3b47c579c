"""autograder without kernels: manifests, comparison, partial credit, hints, harness, file checks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from autograder import check, manifests
from autograder.compare import clamp_score, diagnose, grade_exercise, mismatch
from autograder.grade import grade_notebook, identify, read_notebook
from autograder.harness import run_case, to_plain
from autograder.runner import capture_cell_source
from autograder.selfcheck import SelfCheckFailed

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
        if exercise.reference is None:       # a random exercise: its judge is tested in test_pretraining.py
            continue
        expected = exercise.reference(first)
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
    for detector in exercise.detectors:
        fired = False
        for case in exercise.public_cases():
            inputs = exercise.inputs(case)
            wrong = {k: np.asarray(v.detach() if hasattr(v, "detach") else v) for k, v in detector.produce(inputs).items()}
            passed, _, hint = diagnose(exercise, inputs, wrong)
            fired |= not passed and hint is not None
        assert fired, f"{exercise.id}: detector {detector.name!r} never fires on a public case"


def test_capture_cell_is_valid_python_and_self_contained():
    for item in manifests.ASSIGNMENTS.values():
        source = capture_cell_source(item, "/nonexistent/inputs.npz", "/nonexistent/capture")
        compile(source, "capture", "exec")
        for ex in item.exercises:  # each `call` runs in the kernel without the manifest's imports
            namespace = {}
            exec(compile(__import__("inspect").getsource(ex.call), "call", "exec"), namespace)
            assert callable(namespace[ex.call.__name__])


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


# ----------------------------------------------------------------------------- harness

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


def test_self_check_prints_cases_and_raises_on_failure(capsys):
    check("attention.sdpa", _sdpa())
    assert "all 4 public cases passed" in capsys.readouterr().out
    with pytest.raises(SelfCheckFailed):
        check("attention.sdpa", _sdpa(scale=False))
    out = capsys.readouterr()
    assert "Hint:" in out.out and out.err == ""


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
