"""What an exercise is, in two halves that live in two folders.

**The manifest** (``autograder/manifests/<topic>.py``, an :class:`Exercise`) is what a learner's
kernel may see: the callable's name, its points, its cases and two functions:

``make_inputs(params, rng) -> dict``
    Plain data only (NumPy arrays and numbers): the same inputs go to the learner's kernel and to
    the reference, and survive an ``.npz`` round trip with ``allow_pickle=False``.
``call(fn, inputs) -> dict``
    Runs in the learner's kernel: calls the learner's ``fn`` on the inputs and returns named
    outputs. Its source is copied into the grader's cell, so it imports what it uses itself, and
    it never imports a reference solution (the sandbox leaves those out).

**The oracle** (``autograder/oracles/<topic>.py``, an :class:`Oracle`) is the trusted side, which
the sandbox never shows a kernel:

``reference(inputs) -> dict``
    The expected outputs, from an external implementation where one exists
    (``torch.nn.functional.scaled_dot_product_attention``, ``GPT2LMHeadModel``, ...), otherwise
    from the course's reference code in ``utils``.
``Detector.produce(inputs) -> dict``
    A known wrong answer (unscaled attention, an inverted mask, ...). If the learner's output
    matches it, the feedback names the mistake instead of saying only "wrong".
``judge(inputs, outputs) -> (reason, hint)``
    Instead of a reference, for a *random* exercise (masking tokens, drawing batches): ``call``
    draws many seeded samples, and the judge checks exact invariants on every sample and
    statistics over all of them, each test at a stated significance (an exact tail probability),
    returning ``(None, None)`` when they all hold.

An :class:`Assignment` also names its **reference modules** (``"utils.gpt"``): the modules of
``utils`` that hold the solutions of its exercises. Later notebooks import them; while this
notebook is graded, the sandbox leaves them out.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Inputs = dict[str, Any]
Outputs = dict[str, Any]

# Public cases use a fixed seed so a learner's self-check and the grader see the same inputs.
# Hidden cases are drawn from AUTOGRADER_SECRET: the course repository is public, so an
# instructor who sets a secret of their own gets hidden inputs no student has seen.
PUBLIC_SEED = "public"
DEFAULT_SECRET = "llm-course-default-secret"


def hidden_secret() -> str:
    return os.environ.get("AUTOGRADER_SECRET") or DEFAULT_SECRET


@dataclass(frozen=True)
class Case:
    """One call of the learner's code: ``params`` go to ``make_inputs``; hidden cases are never shown."""

    name: str
    params: dict = field(default_factory=dict)
    hidden: bool = False


@dataclass(frozen=True)
class Detector:
    """A known mistake: ``produce(inputs)`` gives its output, ``hint`` tells the learner what to fix."""

    name: str
    produce: Callable[[Inputs], Outputs]
    hint: str


@dataclass(frozen=True)
class Exercise:
    id: str                 # "attention.sdpa": notebook topic, then exercise
    callable: str           # the name the learner defines: "scaled_dot_product_attention"
    points: float
    make_inputs: Callable[[dict, np.random.Generator], Inputs]
    call: Callable[[Callable, Inputs], Outputs]
    cases: tuple[Case, ...]
    atol: float = 1e-5
    rtol: float = 1e-4
    summary: str = ""       # one line for feedback: what the exercise asks for
    builds_on: tuple[str, ...] = ()    # exercises whose code this one runs (a failure there is named here)
    library: tuple[str, ...] = ()      # names that do the exercise for the learner (flagged for the instructor)
    reference_impl: str = ""           # "utils.gpt:GPT": the course's version, for demos when the learner's fails

    def __post_init__(self):
        names = [case.name for case in self.cases]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.id}: duplicate case names {names}")
        if not any(not case.hidden for case in self.cases):
            raise ValueError(f"{self.id}: needs at least one public case for the self-check")

    def public_cases(self) -> list[Case]:
        return [case for case in self.cases if not case.hidden]

    def inputs(self, case: Case) -> Inputs:
        """The seeded inputs of one case (deterministic; hidden ones depend on the secret)."""
        seed_text = f"{hidden_secret() if case.hidden else PUBLIC_SEED}/{self.id}/{case.name}"
        seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
        return self.make_inputs(dict(case.params), np.random.default_rng(seed))


@dataclass(frozen=True)
class Oracle:
    """The trusted half of an exercise: a ``reference`` or a ``judge``, and its known mistakes."""

    reference: Callable[[Inputs], Outputs] | None = None
    judge: Callable[[Inputs, dict], tuple[str | None, str | None]] | None = None
    detectors: tuple[Detector, ...] = ()

    def __post_init__(self):
        if (self.reference is None) == (self.judge is None):
            raise ValueError("give exactly one of `reference` and `judge`")


@dataclass(frozen=True)
class Assignment:
    """The graded exercises of one notebook, e.g. ``01_attention``, and its reference modules."""

    notebook: str
    title: str
    exercises: tuple[Exercise, ...]
    references: tuple[str, ...] = ()   # utils modules holding its solutions, hidden while it is graded

    def __post_init__(self):
        ids = [ex.id for ex in self.exercises]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.notebook}: duplicate exercise ids {ids}")

    @property
    def max_score(self) -> float:
        return float(sum(ex.points for ex in self.exercises))

    def exercise(self, exercise_id: str) -> Exercise:
        for ex in self.exercises:
            if ex.id == exercise_id:
                return ex
        known = ", ".join(ex.id for ex in self.exercises)
        raise KeyError(f"no exercise {exercise_id!r} in {self.notebook} (known: {known})")
