"""The learner's self-check: ``check("attention.sdpa", scaled_dot_product_attention)``.

It runs the public cases of an exercise in the learner's own kernel, with the same comparison and
mistake detectors as the grader, and prints one line per case. It never writes to stderr (nbgrader
scores a test cell with stderr as 0). When a case fails it raises :class:`SelfCheckFailed`, shown
as one line instead of a traceback, so the cell is marked as failed in Jupyter and in nbgrader.
"""
from __future__ import annotations

from .compare import diagnose
from .harness import run_case
from .manifests import exercise as find_exercise


class SelfCheckFailed(AssertionError):
    """Some public cases failed; the printed lines above say which and why."""

    def _render_traceback_(self):  # IPython shows this instead of a long traceback
        return [f"\x1b[31mSelfCheckFailed: {self}\x1b[0m"]


def check(exercise_id: str, fn) -> None:
    """Run the public cases of ``exercise_id`` on ``fn`` and print a line for each."""
    exercise = find_exercise(exercise_id)
    failures = 0
    cases = exercise.public_cases()
    for case in cases:
        inputs = exercise.inputs(case)
        outputs, report = run_case(fn, exercise.call, inputs)
        if report["status"] == "not_implemented":
            print(f"  · not implemented yet: replace `raise NotImplementedError()` in {exercise.callable} with your code")
            raise SelfCheckFailed(f"{exercise_id}: {exercise.callable} is not implemented yet")
        if report["status"] != "ok":
            failures += 1
            print(f"  ✗ {case.name}: {report['message']}")
            continue
        passed, reason, hint = diagnose(exercise, inputs, outputs)
        if passed:
            print(f"  ✓ {case.name}")
        else:
            failures += 1
            print(f"  ✗ {case.name}: {reason}" + (f"\n      Hint: {hint}" if hint else ""))
    if failures:
        raise SelfCheckFailed(f"{exercise_id}: {failures} of {len(cases)} public cases failed (see above)")
    print(f"{exercise_id}: all {len(cases)} public cases passed. The grader also runs hidden cases.")
