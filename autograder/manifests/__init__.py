"""Exercise manifests, one module per notebook. Add a notebook: write its module, list it here."""
from __future__ import annotations

from ..spec import Assignment, Exercise
from . import attention, efficiency, finetuning, generation, pretraining, rag, safety, setup, tokenization, transformer

ASSIGNMENTS: dict[str, Assignment] = {
    module.ASSIGNMENT.notebook: module.ASSIGNMENT for module in (
        setup, attention, transformer, tokenization, pretraining, generation, finetuning, rag, safety, efficiency,
    )
}


def assignment(notebook: str) -> Assignment:
    """The manifest of a notebook, by its stem (``"01_attention"``)."""
    try:
        return ASSIGNMENTS[notebook]
    except KeyError:
        raise KeyError(f"no graded notebook called {notebook!r}; known: {', '.join(sorted(ASSIGNMENTS))}") from None


def exercise(exercise_id: str) -> Exercise:
    """An exercise by its id (``"attention.sdpa"``), whichever notebook it is in."""
    for item in ASSIGNMENTS.values():
        for ex in item.exercises:
            if ex.id == exercise_id:
                return ex
    raise KeyError(f"no exercise called {exercise_id!r}")
