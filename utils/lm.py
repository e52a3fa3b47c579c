"""The reference solutions of notebook 00 (hidden while it is graded): what a language model computes.

>>> import torch
>>> next_token_probs(torch.zeros(1, 3, 4))
tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
>>> round(float(cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))), 4)
0.7071
>>> uniform = lambda ids: torch.zeros(*ids.shape, 4)                # every next token has p = 1/4
>>> sequence_logprob(uniform, torch.tensor([[0, 1, 2]]))            # 2 predicted tokens x log(1/4)
tensor([-2.7726])
"""
from __future__ import annotations

import torch


def next_token_probs(logits: torch.Tensor) -> torch.Tensor:
    """The distribution over the next token: softmax of the last position's logits, (..., T, V) -> (..., V)."""
    return torch.softmax(logits[..., -1, :], dim=-1)


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Append the most likely next token ``max_new_tokens`` times: (1, T) -> (1, T + max_new_tokens).

    ``model(ids)`` returns logits (1, T, V) (or an object with ``.logits``, like transformers' models).
    """
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(ids)
        logits = getattr(logits, "logits", logits)                  # (1, T, V)
        next_id = logits[:, -1, :].argmax(dim=-1, keepdim=True)     # (1, 1)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a.b / (|a| |b|) over the last axis: (..., d), (..., d) -> (...)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@torch.no_grad()
def sequence_logprob(model, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x_1..x_{T-1} | x_0) = sum over t >= 1 of log p(x_t | x_<t): (B, T) ids -> (B,).

    ``model(ids)`` returns logits (B, T, V) (or an object with ``.logits``); the logits at position
    t - 1 predict token t, and token 0 is never scored (nothing predicts it). ``mask`` (B, T), bool
    or 0/1, says which tokens count (True = score it); with right padding, pass the tokenizer's
    ``attention_mask``: a causal model's real tokens never see the padding after them.
    """
    logits = model(input_ids)
    logits = getattr(logits, "logits", logits)                              # (B, T, V)
    log_probs = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)        # (B, T-1, V): predicts 1..T-1
    targets = input_ids[:, 1:]                                              # (B, T-1)
    token_logprobs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    if mask is not None:
        token_logprobs = torch.where(mask[:, 1:].bool(), token_logprobs, 0.0)   # unscored tokens add 0
    return token_logprobs.sum(dim=-1)                                       # (B,)
