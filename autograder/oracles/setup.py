"""Notebook 00, trusted side: softmax, greedy decoding on the case's bigram table, cosine similarity.

Oracles: ``torch.softmax``, a greedy loop written out here, ``F.cosine_similarity``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..manifests.setup import COSINE, GREEDY_GENERATE, NEXT_TOKEN_PROBS
from ..spec import Detector, Oracle
from .common import tensor as _t


def probs_reference(inputs):
    return {"probs": torch.softmax(_t(inputs, "logits")[..., -1, :], dim=-1)}


def _greedy(inputs, position=-1, keep_prompt=True):
    table = _t(inputs, "table")
    ids = _t(inputs, "input_ids")
    prompt_length = ids.shape[1]
    for _ in range(int(inputs["max_new_tokens"])):
        logits = table[ids]                                    # (1, T, V)
        next_id = logits[:, position, :].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return {"ids": ids if keep_prompt else ids[:, prompt_length:]}


ORACLES = {
    NEXT_TOKEN_PROBS.id: Oracle(
        reference=probs_reference,
        detectors=(
            Detector("first position", lambda inputs: {"probs": torch.softmax(_t(inputs, "logits")[..., 0, :], dim=-1)},
                     "you used the first position: the next token is predicted by the LAST position, logits[..., -1, :]"),
            Detector("no softmax", lambda inputs: {"probs": _t(inputs, "logits")[..., -1, :]},
                     "these are raw logits: turn them into probabilities with a softmax over the vocabulary"),
            Detector("softmax over positions", lambda inputs: {"probs": torch.softmax(_t(inputs, "logits"), dim=-2)[..., -1, :]},
                     "the softmax runs over positions (dim=-2); it must run over the vocabulary (dim=-1)"),
        ),
    ),
    GREEDY_GENERATE.id: Oracle(
        reference=_greedy,
        detectors=(
            Detector("first position", lambda inputs: _greedy(inputs, position=0),
                     "each step must use the logits of the LAST position, logits[:, -1, :]"),
            Detector("only new tokens", lambda inputs: _greedy(inputs, keep_prompt=False),
                     "return the prompt followed by the new tokens, shape (1, T + max_new_tokens)"),
        ),
    ),
    COSINE.id: Oracle(
        reference=lambda inputs: {"similarity": F.cosine_similarity(_t(inputs, "a"), _t(inputs, "b"), dim=-1)},
        detectors=(
            Detector("dot product", lambda inputs: {"similarity": (_t(inputs, "a") * _t(inputs, "b")).sum(-1)},
                     "this is the plain dot product: divide by the two vectors' norms"),
        ),
    ),
}
