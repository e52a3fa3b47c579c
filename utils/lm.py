"""The reference solutions of notebook 00 (hidden while it is graded): what a language model computes.

>>> import torch
>>> next_token_probs(torch.zeros(1, 3, 4))
tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
>>> round(float(cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))), 4)
0.7071
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
