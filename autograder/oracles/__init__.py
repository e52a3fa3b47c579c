"""The trusted side of every exercise: references, judges and known mistakes, by exercise id.

Only the grader's own process imports this package. The sandbox never shows it to a learner's
kernel; the learner's self-check imports it in their own Jupyter, where nothing is graded.
"""
from __future__ import annotations

from ..spec import Oracle
from . import attention, efficiency, finetuning, generation, pretraining, rag, safety, setup, tokenization, transformer

ORACLES: dict[str, Oracle] = {}
for _module in (
    setup, attention, transformer, tokenization, pretraining, generation, finetuning, rag, safety, efficiency,
):
    ORACLES.update(_module.ORACLES)


def oracle(exercise_id: str) -> Oracle:
    """The oracle of an exercise by its id (``"attention.sdpa"``)."""
    try:
        return ORACLES[exercise_id]
    except KeyError:
        raise KeyError(f"no oracle for exercise {exercise_id!r}") from None
