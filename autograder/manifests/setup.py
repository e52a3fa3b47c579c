"""Notebook 00 - what an LLM is: next-token probabilities, greedy decoding, the log-probability of a
sequence, cosine similarity.

Greedy decoding and sequence log-probabilities are graded on a tiny "bigram model" (a fixed logits
table indexed by each position's token) that the grader builds from the case inputs, so no real
model is needed to grade them.
"""
from __future__ import annotations

import numpy as np

from ..spec import Assignment, Case, Exercise

# --------------------------------------------------------------------------- setup.next_token_probs


def probs_inputs(params, rng):
    shape = tuple(params["shape"])
    return {"logits": (params.get("scale", 3.0) * rng.standard_normal(shape)).astype(np.float32)}


def call_probs(fn, inputs):
    import torch

    return {"probs": fn(torch.tensor(inputs["logits"]))}


NEXT_TOKEN_PROBS = Exercise(
    id="setup.next_token_probs",
    callable="next_token_probs",
    points=2,
    summary="softmax of the logits at the last position: (..., T, V) -> (..., V)",
    make_inputs=probs_inputs,
    call=call_probs,
    cases=(
        Case("one sequence (T, V)", {"shape": (4, 10)}),
        Case("a batch (B, T, V)", {"shape": (3, 5, 12)}),
        Case("large logits", {"shape": (2, 6, 50), "scale": 40.0}, hidden=True),
    ),
    reference_impl="utils.lm:next_token_probs",
)

# --------------------------------------------------------------------------- setup.greedy_generate


def greedy_inputs(params, rng):
    vocab, t = params["V"], params["T"]
    return {
        "table": (2.0 * rng.standard_normal((vocab, vocab))).astype(np.float32),
        "input_ids": rng.integers(0, vocab, size=(1, t)).astype(np.int64),
        "max_new_tokens": np.asarray(params["new"]),
    }


def call_greedy(fn, inputs):
    import torch

    table = torch.tensor(inputs["table"])

    def bigram_model(ids):  # (1, T) -> (1, T, V): the logits depend only on each position's token
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise TypeError(f"the model takes a (1, T) LongTensor of ids, got {getattr(ids, 'shape', type(ids))}")
        return table[ids]

    return {"ids": fn(bigram_model, torch.tensor(inputs["input_ids"]), int(inputs["max_new_tokens"]))}


GREEDY_GENERATE = Exercise(
    id="setup.greedy_generate",
    callable="greedy_generate",
    points=3,
    summary="append argmax(next-token logits) max_new_tokens times; return prompt + new ids (1, T + n)",
    make_inputs=greedy_inputs,
    call=call_greedy,
    cases=(
        Case("5 new tokens", {"V": 12, "T": 3, "new": 5}),
        Case("1 new token", {"V": 7, "T": 1, "new": 1}),
        Case("20 new tokens", {"V": 40, "T": 6, "new": 20}, hidden=True),
    ),
    library=("generate",),
    reference_impl="utils.lm:greedy_generate",
)

# --------------------------------------------------------------------------- setup.sequence_logprob


def logprob_inputs(params, rng):
    vocab, batch, t = params["V"], params["B"], params["T"]
    inputs = {
        "table": (params.get("scale", 2.0) * rng.standard_normal((vocab, vocab))).astype(np.float32),
        "input_ids": rng.integers(0, vocab, size=(batch, t)).astype(np.int64),
        "wrap": np.asarray(params.get("wrap", False)),     # the model returns an object with .logits
    }
    if params.get("mask") == "padding":                    # right padding: the first lengths[b] tokens are real
        lengths = rng.integers(2, t + 1, size=batch)
        lengths[0] = t
        inputs["mask"] = np.arange(t)[None, :] < lengths[:, None]
    elif params.get("mask") == "answer":                   # score only a continuation after a prompt
        starts = rng.integers(1, t - 1, size=batch)
        inputs["mask"] = np.arange(t)[None, :] >= starts[:, None]
    return inputs


def call_logprob(fn, inputs):
    import types

    import torch

    table = torch.tensor(inputs["table"])
    wrap = bool(inputs["wrap"])

    def bigram_model(ids):  # (B, T) -> (B, T, V): the logits depend only on each position's token
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise TypeError(f"the model takes a (B, T) LongTensor of ids, got {getattr(ids, 'shape', type(ids))}")
        logits = table[ids]
        return types.SimpleNamespace(logits=logits) if wrap else logits

    ids = torch.tensor(inputs["input_ids"])
    if "mask" in inputs:
        return {"logprob": fn(bigram_model, ids, mask=torch.tensor(inputs["mask"]))}
    return {"logprob": fn(bigram_model, ids)}


SEQUENCE_LOGPROB = Exercise(
    id="setup.sequence_logprob",
    callable="sequence_logprob",
    points=3,
    summary="sum over t >= 1 of log p(ids[t] | ids[:t]) per sequence, optionally only where mask: (B, T) -> (B,)",
    make_inputs=logprob_inputs,
    call=call_logprob,
    cases=(
        Case("one sequence", {"V": 6, "B": 1, "T": 5}),
        Case("a batch, .logits", {"V": 10, "B": 3, "T": 7, "wrap": True}),
        Case("right padding mask", {"V": 8, "B": 4, "T": 6, "mask": "padding"}),
        Case("answer tokens only", {"V": 30, "B": 3, "T": 12, "mask": "answer", "wrap": True}, hidden=True),
        Case("long, peaked", {"V": 50, "B": 2, "T": 40, "scale": 6.0}, hidden=True),
    ),
    library=("ForCausalLMLoss",),
    reference_impl="utils.lm:sequence_logprob",
)

# --------------------------------------------------------------------------- setup.cosine_similarity


def cosine_inputs(params, rng):
    shape = tuple(params["shape"])
    a = rng.standard_normal(shape).astype(np.float32)
    b = (rng.standard_normal(shape) * params.get("scale_b", 1.0)).astype(np.float32)
    return {"a": a, "b": b}


def call_cosine(fn, inputs):
    import torch

    return {"similarity": fn(torch.tensor(inputs["a"]), torch.tensor(inputs["b"]))}


COSINE = Exercise(
    id="setup.cosine_similarity",
    callable="cosine_similarity",
    points=2,
    summary="a.b / (|a| |b|) over the last axis: (..., d), (..., d) -> (...)",
    make_inputs=cosine_inputs,
    call=call_cosine,
    cases=(
        Case("two vectors", {"shape": (16,)}),
        Case("rows of matrices", {"shape": (5, 8), "scale_b": 3.0}),
        Case("batched", {"shape": (2, 3, 64), "scale_b": 0.1}, hidden=True),
    ),
    library=("cosine_similarity",),
    reference_impl="utils.lm:cosine_similarity",
)

ASSIGNMENT = Assignment(
    notebook="00_setup",
    title="Setup and what an LLM is",
    exercises=(NEXT_TOKEN_PROBS, GREEDY_GENERATE, SEQUENCE_LOGPROB, COSINE),
    references=("utils.lm",),
)
