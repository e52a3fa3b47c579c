"""The learner's self-check, ``check("attention.sdpa", scaled_dot_product_attention)``, and the demos'
fallback, ``use("attention.sdpa", scaled_dot_product_attention)``.

``check`` runs the public cases of an exercise in the learner's own kernel, with the same comparison
and mistake detectors as the grader, and prints one line per case (a hint that names a known
mistake is printed once, however many cases it explains). It never writes to stderr (nbgrader
scores a test cell with stderr as 0).

* An exercise **not attempted yet** (it still raises ``NotImplementedError``) prints a one-line
  notice and does not stop Run All in JupyterLab. Under nbgrader (``nbgrader validate`` or
  ``autograde``) it raises, so that the test cell scores 0.
* A **wrong answer** raises :class:`SelfCheckFailed`, shown as one line instead of a traceback:
  that is the signal to fix it, and Run All stops there.
* **While the course's grader runs the notebook**, the self-check does nothing: the grader runs the
  same cases (and hidden ones) itself, and the references are not in the sandbox.

``use`` returns the learner's function when it passes its public cases, otherwise the course's
version (``utils``), with a one-line notice: a demo never blocks a learner who is stuck.
"""
from __future__ import annotations

import importlib
import os

from .capture import run_case
from .manifests import exercise as find_exercise


class SelfCheckFailed(AssertionError):
    """Some public cases failed; the printed lines above say which and why."""

    def _render_traceback_(self):  # IPython shows this instead of a long traceback
        return [f"\x1b[31mSelfCheckFailed: {self}\x1b[0m"]


def grading() -> bool:
    """True in the course grader's sandbox (it sets ``LLM_COURSE_GRADING``)."""
    return os.environ.get("LLM_COURSE_GRADING") == "1"


def _results(exercise, fn) -> list[tuple[str, str, str | None]]:
    """``(case, status, detail)`` per public case: status ``passed``, ``failed`` or ``not_implemented``;
    detail is the reason, then the hint on its own line when the mistake is a known one."""
    from .compare import diagnose

    rows = []
    for case in exercise.public_cases():
        inputs = exercise.inputs(case)
        outputs, report = run_case(fn, exercise.call, inputs)
        if report["status"] == "not_implemented":
            return [(case.name, "not_implemented", None)]
        if report["status"] != "ok":
            rows.append((case.name, "failed", report["message"], None))
            continue
        passed, reason, hint = diagnose(exercise, inputs, outputs)
        rows.append((case.name, "passed" if passed else "failed", reason, hint))
    return rows


def check(exercise_id: str, fn) -> None:
    """Run the public cases of ``exercise_id`` on ``fn`` and print a line for each (see the module)."""
    exercise = find_exercise(exercise_id)
    if grading():
        print(f"{exercise_id}: checked by the grader (public and hidden cases), not here.")
        return
    rows = _results(exercise, fn)
    if rows and rows[0][1] == "not_implemented":
        print(f"  · {exercise.callable} is not implemented yet: replace `raise NotImplementedError()` with your "
              "code, then run this cell again.")
        if os.environ.get("NBGRADER_EXECUTION"):
            raise SelfCheckFailed(f"{exercise_id}: {exercise.callable} is not implemented yet")
        return
    failures, hints_shown = 0, set()
    for name, status, reason, hint in rows:
        if status == "passed":
            print(f"  ✓ {name}")
            continue
        failures += 1
        print(f"  ✗ {name}: {reason}")
        if hint and hint not in hints_shown:
            hints_shown.add(hint)
            print(f"      Hint: {hint}")
    if failures and exercise.builds_on:
        names = [find_exercise(i).callable for i in exercise.builds_on]
        print(f"      Note: {exercise.callable} runs your {', '.join(names)}: if one of them fails its own check, "
              "fix that first.")
    if failures:
        raise SelfCheckFailed(f"{exercise_id}: {failures} of {len(rows)} public cases failed; the lines above "
                              "say which and why")
    print(f"{exercise_id}: all {len(rows)} public cases passed. The grader also runs hidden cases.")


def passes(exercise_id: str, fn) -> bool:
    """Does ``fn`` pass every public case of ``exercise_id``? Quiet; never raises."""
    try:
        rows = _results(find_exercise(exercise_id), fn)
    except Exception:  # noqa: BLE001 - a learner's object the check cannot even call
        return False
    return bool(rows) and all(status == "passed" for _, status, *_ in rows)


def reference(exercise_id: str):
    """The course's own version of an exercise (``utils``), or ``None`` where it cannot be imported
    (in the grader's sandbox, the references of the notebook being graded are left out)."""
    exercise = find_exercise(exercise_id)
    if not exercise.reference_impl:
        return None
    module, name = exercise.reference_impl.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None


def use(exercise_id: str, fn):
    """``fn`` when it passes its public cases, else the course's version, with a one-line notice.

    While graded, the learner's ``fn`` is returned as it is (the grader scores it on its own).
    """
    if grading():
        return fn
    if passes(exercise_id, fn):
        return fn
    exercise = find_exercise(exercise_id)
    ours = reference(exercise_id)
    if ours is None:
        print(f"(note: your {exercise.callable} does not pass its self-check yet, and the course's version "
              "is not available here: this cell uses yours)")
        return fn
    print(f"(note: your {exercise.callable} does not pass its self-check yet: this cell uses the course's "
          f"version, {exercise.reference_impl.replace(':', '.')})")
    return ours
