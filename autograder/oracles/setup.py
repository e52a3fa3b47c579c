"""Notebook 00, trusted side: softmax, greedy decoding and sequence log-probabilities on the case's
bigram table, cosine similarity.

Oracles: ``torch.softmax``, a greedy loop written out here, transformers' own causal-LM loss
(``transformers.loss.loss_utils.ForCausalLMLoss``, what ``LlamaForCausalLM`` computes when given
``labels``), ``F.cosine_similarity``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..manifests.setup import COSINE, GREEDY_GENERATE, NEXT_TOKEN_PROBS, SEQUENCE_LOGPROB
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


def _logits_and_mask(inputs):
    """The bigram model's logits (B, T, V), the ids (B, T) and which tokens are scored (B, T) bool."""
    ids = _t(inputs, "input_ids")
    logits = _t(inputs, "table")[ids]
    mask = _t(inputs, "mask") if "mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
    return logits, ids, mask


def logprob_reference(inputs):
    """-(transformers' causal-LM loss) x the number of predicted tokens, one sequence at a time."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, ids, mask = _logits_and_mask(inputs)
    labels = ids.masked_fill(~mask, -100)          # -100: ignored, as in a Hugging Face training batch
    totals = []
    for b in range(ids.shape[0]):
        n_predicted = int(mask[b, 1:].sum())       # token 0 is never predicted
        loss = ForCausalLMLoss(logits[b:b + 1], labels[b:b + 1], vocab_size=logits.shape[-1])  # mean NLL
        totals.append(-loss * n_predicted if n_predicted else torch.zeros(()))
    return {"logprob": torch.stack(totals).float()}


def _logprob_variant(align="next", use_mask=True, mask_shift=1, reduce="sum", dim=-1, kind="log"):
    """Known mistakes: how logits and targets are aligned (``align``), which tokens count, what is summed.

    ``align``: "next" (right: logits t-1 score token t), "own" (logits t score token t, t >= 1),
    "own+first" (the same from t = 0) or "roll" (targets ids.roll(-1): position T-1 scores token 0).
    """
    def produce(inputs):
        logits, ids, mask = _logits_and_mask(inputs)
        log_probs = torch.log_softmax(logits, dim=dim)                             # (B, T, V)
        everything = torch.ones_like(mask)
        if align == "roll":
            token = log_probs.gather(-1, ids.roll(-1, dims=1)[..., None])[..., 0]     # (B, T)
            keep = mask.roll(-1, dims=1) if use_mask else everything
        elif align == "next":
            token = log_probs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]         # (B, T-1)
            keep = (mask[:, 1:] if mask_shift else mask[:, :-1]) if use_mask else everything[:, 1:]
        else:
            start = 0 if align == "own+first" else 1
            token = log_probs[:, start:].gather(-1, ids[:, start:, None])[..., 0]   # (B, T - start)
            keep = mask[:, start:] if use_mask else everything[:, start:]
        if kind == "prob":
            token = token.exp()
        token = torch.where(keep, token, torch.zeros(()))
        total = token.sum(-1)
        if reduce == "mean":
            total = total / keep.sum(-1).clamp(min=1)
        elif reduce == "exp":
            total = total.exp()
        elif reduce == "neg":
            total = -total
        return {"logprob": total.float()}

    return produce


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
    SEQUENCE_LOGPROB.id: Oracle(
        reference=logprob_reference,
        detectors=(
            Detector("no shift", _logprob_variant(align="own+first"),
                     "each token is scored with the logits at its own position, and token 0 is scored too: the "
                     "logits at position t predict token t + 1, so score ids[:, 1:] with logits[:, :-1]"),
            Detector("own position", _logprob_variant(align="own"),
                     "off by one: token t is scored with the logits of position t, which predict token t + 1: "
                     "score ids[:, 1:] with logits[:, :-1]"),
            Detector("roll wraps around", _logprob_variant(align="roll"),
                     "ids.roll(-1) wraps around, so the last position 'predicts' token 0, which nothing predicts: "
                     "slice instead, logits[:, :-1] against ids[:, 1:]"),
            Detector("mean", _logprob_variant(reduce="mean"),
                     "this is the mean log-probability per token: return the SUM over the scored tokens"),
            Detector("negative", _logprob_variant(reduce="neg"),
                     "this is the negative log-likelihood (what cross_entropy returns): a log-probability is <= 0"),
            Detector("probability", _logprob_variant(reduce="exp"),
                     "this is the probability of the sequence, exp(sum): return its logarithm, the sum of "
                     "log-probabilities (products of many probabilities underflow)"),
            Detector("sum of probabilities", _logprob_variant(kind="prob"),
                     "you summed probabilities: sum the LOG-probabilities (log_softmax, not softmax)"),
            Detector("softmax over positions", _logprob_variant(dim=-2),
                     "the log_softmax runs over positions (dim=1): it must run over the vocabulary (dim=-1)"),
            Detector("mask ignored", _logprob_variant(use_mask=False),
                     "every token is scored: add only the tokens where mask is True (mask[:, 1:] lines up with ids[:, 1:])"),
            Detector("mask not shifted", _logprob_variant(mask_shift=0),
                     "the mask is off by one: the scores of ids[:, 1:] go with mask[:, 1:], not mask[:, :-1]"),
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
