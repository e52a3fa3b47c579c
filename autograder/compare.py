"""Trusted comparison: learner outputs (plain arrays) against the reference, with hints.

Used in two places with the same rules: by the grader, on arrays read back from a learner's
kernel, and by :func:`autograder.check`, the learner's self-check. Every check is explicit:
presence, exact array type, shape, dtype, finiteness, then values within a stated tolerance.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .spec import Exercise, Inputs


def _as_arrays(outputs: dict) -> dict[str, np.ndarray]:
    """Reference outputs may be tensors or numbers; bring them to arrays (trusted values only)."""
    result = {}
    for key, value in outputs.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        result[key] = np.asarray(value)
    return result


def mismatch(expected: dict, got: dict, atol: float, rtol: float) -> str | None:
    """Why ``got`` is not ``expected`` (``None`` when every output matches).

    >>> mismatch({"y": np.ones(2, np.float32)}, {"y": np.ones(2, np.float32)}, 1e-5, 1e-4) is None
    True
    >>> mismatch({"y": np.ones(2, np.float32)}, {"y": np.ones(3, np.float32)}, 1e-5, 1e-4)
    '`y` has shape (3,), expected (2,)'
    """
    for key, want in _as_arrays(expected).items():
        if key not in got:
            return f"no `{key}` was returned"
        have = got[key]
        if type(have) is not np.ndarray:
            return f"`{key}` is a {type(have).__name__}, not an array"
        if have.shape != want.shape:
            return f"`{key}` has shape {tuple(have.shape)}, expected {tuple(want.shape)}"
        if want.dtype == np.bool_:
            if have.dtype != np.bool_:
                return f"`{key}` has dtype {have.dtype}, expected bool (True/False)"
            wrong = int(np.count_nonzero(have != want))
            if wrong:
                return f"`{key}` differs in {wrong} of {want.size} entries"
            continue
        if want.dtype.kind in "iu":
            if have.dtype.kind not in "iu":
                return f"`{key}` has dtype {have.dtype}, expected integers"
            wrong = int(np.count_nonzero(have != want))
            if wrong:
                return f"`{key}` differs in {wrong} of {want.size} entries"
            continue
        if have.dtype != want.dtype:
            return f"`{key}` has dtype {have.dtype}, expected {want.dtype}"
        finite = np.isfinite(want)
        if not np.array_equal(np.isfinite(have), finite):
            return f"`{key}` contains NaN or Inf where the expected values are finite"
        if not np.allclose(have[finite], want[finite], atol=atol, rtol=rtol):
            diff = float(np.max(np.abs(have[finite].astype(np.float64) - want[finite])))
            return f"`{key}` differs: max abs difference {diff:.3g} (tolerance {atol:g} + {rtol:g}*|expected|)"
    return None


def expect_array(got: dict, key: str, kind: str, shape: tuple | None = None) -> str | None:
    """Why ``got[key]`` is not an array of ``kind`` (``"int"``, ``"float"`` or ``"bool"``) and ``shape``.

    The first check of a judge: after it, the judge may index the array freely.

    >>> expect_array({"x": np.zeros((2, 3), np.int64)}, "x", "int", (2, 3)) is None
    True
    >>> expect_array({"x": np.zeros(3)}, "x", "int")
    '`x` has dtype float64, expected integers'
    """
    if key not in got:
        return f"no `{key}` was returned"
    have = got[key]
    if type(have) is not np.ndarray:
        return f"`{key}` is a {type(have).__name__}, not an array"
    kinds = {"int": ("iu", "integers"), "float": ("f", "floats"), "bool": ("b", "True/False")}[kind]
    if have.dtype.kind not in kinds[0]:
        return f"`{key}` has dtype {have.dtype}, expected {kinds[1]}"
    if shape is not None and have.shape != tuple(shape):
        return f"`{key}` has shape {tuple(have.shape)}, expected {tuple(shape)}"
    if kind == "float" and not np.isfinite(have).all():
        return f"`{key}` contains NaN or Inf"
    return None


def diagnose(exercise: Exercise, inputs: Inputs, got: dict) -> tuple[bool, str | None, str | None]:
    """``(passed, reason, hint)`` for one case: the reason it failed and the known mistake it matches."""
    from .oracles import oracle

    trusted = oracle(exercise.id)
    if trusted.judge is not None:
        try:
            reason, hint = trusted.judge(inputs, got)
        except Exception as error:  # untrusted arrays of a shape the judge did not foresee
            reason, hint = f"the outputs could not be checked ({type(error).__name__}: {str(error)[:200]})", None
        return reason is None, reason, hint
    reason = mismatch(trusted.reference(inputs), got, exercise.atol, exercise.rtol)
    if reason is None:
        return True, None, None
    for detector in trusted.detectors:
        if mismatch(detector.produce(inputs), got, exercise.atol, exercise.rtol) is None:
            return False, reason, detector.hint
    return False, reason, None


@dataclass
class CaseResult:
    name: str
    hidden: bool
    passed: bool
    message: str = ""


@dataclass
class ExerciseResult:
    id: str
    status: str          # passed | failed | error | missing
    score: float
    max_score: float
    message: str
    cases: list[CaseResult] = field(default_factory=list)

    def public_dict(self) -> dict:
        """The record of the report schema (case details stay out: hidden cases are never shown)."""
        data = asdict(self)
        data.pop("cases")
        return data


def clamp_score(value: float, maximum: float) -> float:
    """Points are in ``[0, maximum]``; NaN counts as 0."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return 0.0
    return float(min(max(value, 0.0), maximum))


# Exception names that are safe to repeat for a hidden case (a learner's own class could be named after
# the hidden inputs, so any other name is reported as "an exception").
SAFE_EXCEPTIONS = frozenset({
    "ArithmeticError", "AssertionError", "AttributeError", "IndexError", "KeyError", "LookupError", "MemoryError",
    "NameError", "NotImplementedError", "OverflowError", "RecursionError", "RuntimeError", "TypeError",
    "UnboundLocalError", "ValueError", "ZeroDivisionError", "SelfCheckFailed"})


def _hidden_failure(status, exception) -> str:
    """What may be said of a hidden case that did not return: its status, and the exception's name when
    it is a built-in one."""
    if status == "not_implemented":
        return "raised NotImplementedError"
    if status == "error" and exception in SAFE_EXCEPTIONS:
        return f"raised {exception}"
    if status == "error" and exception:
        return "raised an exception"
    if status == "error":
        return "returned something that is not a tensor or a number (the public cases show what)"
    return ""


def grade_exercise(exercise: Exercise, report: dict | None, arrays: dict[str, np.ndarray]) -> ExerciseResult:
    """Score one exercise from a capture (``report`` from capture.json, ``arrays`` from capture.npz)."""
    points = float(exercise.points)
    if not isinstance(report, dict) or report.get("status") == "missing":
        message = (report or {}).get("message") if isinstance(report, dict) else None
        return ExerciseResult(exercise.id, "missing", 0.0, points,
                              str(message or f"`{exercise.callable}` was not found: define it in the notebook"))
    case_reports = report.get("cases") if isinstance(report.get("cases"), dict) else {}
    results: list[CaseResult] = []
    statuses = []
    hidden_number = 0
    for case in exercise.cases:
        hidden_number += case.hidden
        label = f"hidden case {hidden_number}" if case.hidden else f"case '{case.name}'"
        case_report = case_reports.get(case.name)
        status = case_report.get("status") if isinstance(case_report, dict) else None
        statuses.append(status)
        if status != "ok":
            if case.hidden:  # nothing the learner's code wrote about a hidden case is shown
                text = _hidden_failure(status, case_report.get("exception") if isinstance(case_report, dict) else None)
            else:
                text = str(case_report.get("message", "")) if isinstance(case_report, dict) else ""
            text = text or "the grader's cell did not reach this case (the kernel stopped early)"
            results.append(CaseResult(case.name, case.hidden, False, f"{label}: {text[:600]}"))
            continue
        prefix = f"{exercise.id}/{case.name}/"
        got = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
        passed, reason, hint = diagnose(exercise, exercise.inputs(case), got)
        message = "" if passed else f"{label}: {reason}" + (f". Hint: {hint}" if hint else "")
        results.append(CaseResult(case.name, case.hidden, passed, message))

    n_passed = sum(r.passed for r in results)
    score = clamp_score(points * n_passed / len(results), points)
    if n_passed == len(results):
        return ExerciseResult(exercise.id, "passed", points, points, f"all {len(results)} cases passed", results)
    if all(s == "not_implemented" for s in statuses):
        return ExerciseResult(exercise.id, "missing", 0.0, points,
                              f"not implemented yet: `{exercise.callable}` raises NotImplementedError. "
                              "Replace `raise NotImplementedError()` with your code.", results)
    status = "error" if n_passed == 0 and any(s in ("error", "not_implemented") for s in statuses) else "failed"
    first = next(r for r in results if not r.passed)
    message = f"{n_passed}/{len(results)} cases passed. {first.message}"
    return ExerciseResult(exercise.id, status, round(score, 4), points, message, results)
