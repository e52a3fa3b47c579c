"""The course's grading engine.

* In a notebook: ``from autograder import check, use`` for the learner's self-check and for demos
  that fall back to the course's version of an exercise the learner has not solved yet.
* From a shell: ``python -m autograder grade PATH... --out DIR`` (see ``python -m autograder -h``).

Grading runs a submission in a separate, sandboxed kernel, collects its outputs on public and
hidden inputs as plain arrays, and scores them in this trusted process against reference
implementations (``autograder/oracles``, which the sandbox never shows a kernel).
"""
import sys as _sys

# jsonschema (imported by nbformat, papermill and nbgrader) builds a grammar for the optional
# `rfc3987_syntax` format checker at import time: ~2 s per process, for a format notebooks never
# use. Marking it absent makes jsonschema skip that one checker (it guards the import).
_sys.modules.setdefault("rfc3987_syntax", None)


def check(exercise_id, fn):
    """Run the public cases of an exercise on ``fn`` (see :mod:`autograder.selfcheck`)."""
    from .selfcheck import check as _check

    return _check(exercise_id, fn)


def use(exercise_id, fn):
    """``fn`` if it passes its public cases, else the course's version (see :mod:`autograder.selfcheck`)."""
    from .selfcheck import use as _use

    return _use(exercise_id, fn)


__all__ = ["check", "use"]
