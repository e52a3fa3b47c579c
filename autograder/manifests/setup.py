"""Notebook 00 - what an LLM is: next-token probabilities, greedy decoding, cosine similarity.

Greedy decoding is graded on a tiny "bigram model" (a fixed logits table indexed by the last
token) that the grader builds from the case inputs, so no real model is needed to grade it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..spec import Assignment, Case, Detector, Exercise


def _t(inputs, key):
    return torch.from_numpy(np.array(inputs[key], copy=True))


# --------------------------------------------------------------------------- setup.next_token_probs


def probs_inputs(params, rng):
    shape = tuple(params["shape"])
    return {"logits": (params.get("scale", 3.0) * rng.standard_normal(shape)).astype(np.float32)}


def call_probs(fn, inputs):
    import torch

    return {"probs": fn(torch.tensor(inputs["logits"]))}


def probs_reference(inputs):
    return {"probs": torch.softmax(_t(inputs, "logits")[..., -1, :], dim=-1)}


NEXT_TOKEN_PROBS = Exercise(
    id="setup.next_token_probs",
    callable="next_token_probs",
    points=2,
    summary="softmax of the logits at the last position: (..., T, V) -> (..., V)",
    make_inputs=probs_inputs,
    call=call_probs,
    reference=probs_reference,
    cases=(
        Case("one sequence (T, V)", {"shape": (4, 10)}),
        Case("a batch (B, T, V)", {"shape": (3, 5, 12)}),
        Case("large logits", {"shape": (2, 6, 50), "scale": 40.0}, hidden=True),
    ),
    detectors=(
        Detector("first position", lambda inputs: {"probs": torch.softmax(_t(inputs, "logits")[..., 0, :], dim=-1)},
                 "you used the first position: the next token is predicted by the LAST position, logits[..., -1, :]"),
        Detector("no softmax", lambda inputs: {"probs": _t(inputs, "logits")[..., -1, :]},
                 "these are raw logits: turn them into probabilities with a softmax over the vocabulary"),
        Detector("softmax over positions", lambda inputs: {"probs": torch.softmax(_t(inputs, "logits"), dim=-2)[..., -1, :]},
                 "the softmax runs over positions (dim=-2); it must run over the vocabulary (dim=-1)"),
    ),
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


def _greedy(inputs, position=-1, keep_prompt=True):
    table = _t(inputs, "table")
    ids = _t(inputs, "input_ids")
    prompt_length = ids.shape[1]
    for _ in range(int(inputs["max_new_tokens"])):
        logits = table[ids]                                    # (1, T, V)
        next_id = logits[:, position, :].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return {"ids": ids if keep_prompt else ids[:, prompt_length:]}


GREEDY_GENERATE = Exercise(
    id="setup.greedy_generate",
    callable="greedy_generate",
    points=3,
    summary="append argmax(next-token logits) max_new_tokens times; return prompt + new ids (1, T + n)",
    make_inputs=greedy_inputs,
    call=call_greedy,
    reference=_greedy,
    cases=(
        Case("5 new tokens", {"V": 12, "T": 3, "new": 5}),
        Case("1 new token", {"V": 7, "T": 1, "new": 1}),
        Case("20 new tokens", {"V": 40, "T": 6, "new": 20}, hidden=True),
    ),
    detectors=(
        Detector("first position", lambda inputs: _greedy(inputs, position=0),
                 "each step must use the logits of the LAST position, logits[:, -1, :]"),
        Detector("only new tokens", lambda inputs: _greedy(inputs, keep_prompt=False),
                 "return the prompt followed by the new tokens, shape (1, T + max_new_tokens)"),
    ),
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
    reference=lambda inputs: {"similarity": F.cosine_similarity(_t(inputs, "a"), _t(inputs, "b"), dim=-1)},
    cases=(
        Case("two vectors", {"shape": (16,)}),
        Case("rows of matrices", {"shape": (5, 8), "scale_b": 3.0}),
        Case("batched", {"shape": (2, 3, 64), "scale_b": 0.1}, hidden=True),
    ),
    detectors=(
        Detector("dot product", lambda inputs: {"similarity": (_t(inputs, "a") * _t(inputs, "b")).sum(-1)},
                 "this is the plain dot product: divide by the two vectors' norms"),
    ),
)

ASSIGNMENT = Assignment(
    notebook="00_setup",
    title="Setup and what an LLM is",
    exercises=(NEXT_TOKEN_PROBS, GREEDY_GENERATE, COSINE),
)
