"""The reference solutions of notebook 01 (hidden while it is graded): scaled dot-product attention,
the causal and padding masks, and multi-head attention.

Later notebooks and the demos of notebook 01 (when a learner's version does not pass its
self-check yet) use these. The models of the course use the fused ``F.scaled_dot_product_attention``
instead (``utils.models.CausalSelfAttention``); this module keeps the weights visible.

>>> import torch
>>> out, w = scaled_dot_product_attention(torch.zeros(1, 2), torch.ones(3, 2), torch.arange(3.).view(3, 1))
>>> w
tensor([[0.3333, 0.3333, 0.3333]])
>>> causal_mask(3)
tensor([[ True, False, False],
        [ True,  True, False],
        [ True,  True,  True]])
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v with an optional boolean mask (True = may attend): (output, weights).

    q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v) -> output (..., T_q, d_v), weights (..., T_q, T_k).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])       # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))           # blocked pairs get weight 0
    weights = torch.softmax(scores, dim=-1)                         # each row sums to 1
    return weights @ v, weights                                     # (..., T_q, d_v)


def causal_mask(T: int) -> torch.Tensor:
    """(T, T) bool, True where query i may attend to key j, i.e. j <= i."""
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


def padding_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) bool, True for the first lengths[b] positions of sequence b.

    >>> padding_mask(torch.tensor([3, 1]), 4)
    tensor([[ True,  True,  True, False],
            [ True, False, False, False]])
    """
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]     # (B, T)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: forward(x (B, T, d_model), mask=None) -> (B, T, d_model).

    >>> MultiHeadAttention(16, 4)(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        B, T, d_model = x.shape

        def split_heads(z):                                                     # (B, T, d_model)
            return z.view(B, T, self.n_heads, self.d_head).transpose(1, 2)      # (B, h, T, d_head)

        q, k, v = split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
        out, _ = scaled_dot_product_attention(q, k, v, mask)                    # (B, h, T, d_head)
        out = out.transpose(1, 2).reshape(B, T, d_model)                        # (B, T, d_model)
        return self.out_proj(out)
