"""Notebook 01, trusted side: references and known mistakes of the attention exercises.

Oracles: ``torch.nn.functional.scaled_dot_product_attention`` and ``torch.nn.MultiheadAttention``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..manifests.attention import CAUSAL, MHA, PADDING, SDPA, _causal, _padding
from ..spec import Detector, Oracle
from .common import tensor as _t


def _weights(q, k, mask, scale=True, mask_after=False, dim=-1):
    scores = q @ k.transpose(-2, -1)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    if mask is not None and not mask_after:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    if mask is not None and mask_after:
        weights = weights.masked_fill(~mask, 0.0)
    return weights


def sdpa_reference(inputs):
    q, k, v = _t(inputs, "q"), _t(inputs, "k"), _t(inputs, "v")
    mask = _t(inputs, "mask") if "mask" in inputs else None
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # the oracle
    return {"output": output, "weights": _weights(q, k, mask)}


def _sdpa_variant(invert=False, **how):
    def produce(inputs):
        q, k, v = _t(inputs, "q"), _t(inputs, "k"), _t(inputs, "v")
        mask = _t(inputs, "mask") if "mask" in inputs else None
        if invert and mask is not None:
            mask = ~mask
        weights = _weights(q, k, mask, **how)
        return {"output": weights @ v, "weights": weights}

    return produce


def causal_reference(inputs):
    return {"mask": _causal(int(inputs["T"]), int(inputs["T"]))}


def padding_reference(inputs):
    return {"mask": _padding(inputs["lengths"], int(inputs["T"]))}


def _torch_mha(inputs) -> torch.nn.MultiheadAttention:
    d, heads = int(inputs["d_model"]), int(inputs["n_heads"])
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(_t(inputs, "in_proj_weight"))
        mha.in_proj_bias.copy_(_t(inputs, "in_proj_bias"))
        mha.out_proj.weight.copy_(_t(inputs, "out_proj_weight"))
        mha.out_proj.bias.copy_(_t(inputs, "out_proj_bias"))
    return mha.eval()


def mha_reference(inputs):
    x = _t(inputs, "x")
    kwargs = {}
    if "mask" in inputs:
        mask = _t(inputs, "mask")
        if mask.dim() == 2:
            kwargs["attn_mask"] = ~mask                     # torch: True = NOT allowed
        else:
            kwargs["key_padding_mask"] = ~mask[:, 0, 0, :]  # (B, T)
    with torch.no_grad():
        output, _ = _torch_mha(inputs)(x, x, x, need_weights=False, **kwargs)
    return {"output": output}


def _mha_variant(scale=True, no_transpose=False, no_final_transpose=False):
    def produce(inputs):
        x = _t(inputs, "x")
        batch, t, d = x.shape
        heads = int(inputs["n_heads"])
        qkv = x @ _t(inputs, "in_proj_weight").T + _t(inputs, "in_proj_bias")   # (B, T, 3d)
        q, k, v = qkv.split(d, dim=-1)
        if no_transpose:  # the classic bug: view straight to (B, H, T, d_head)
            q, k, v = (z.reshape(batch, heads, t, d // heads) for z in (q, k, v))
        else:
            q, k, v = (z.view(batch, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        mask = _t(inputs, "mask") if "mask" in inputs else None
        out = _weights(q, k, mask, scale=scale) @ v                              # (B, H, T, d_head)
        if no_final_transpose:  # the same bug on the way back: (B, H, T, d_head) reshaped straight to (B, T, d)
            out = out.reshape(batch, t, d)
        else:
            out = out.transpose(1, 2).reshape(batch, t, d)                          # (B, T, d)
        return {"output": out @ _t(inputs, "out_proj_weight").T + _t(inputs, "out_proj_bias")}

    return produce


ORACLES = {
    SDPA.id: Oracle(
        reference=sdpa_reference,
        detectors=(
            Detector("unscaled", _sdpa_variant(scale=False),
                     "your scores are not divided by sqrt(d): use q @ k.transpose(-2, -1) / math.sqrt(d)"),
            Detector("mask after softmax", _sdpa_variant(mask_after=True),
                     "the mask is applied after the softmax, so the weights no longer sum to 1: "
                     "fill masked scores with -inf *before* the softmax"),
            Detector("inverted mask", _sdpa_variant(invert=True),
                     "the mask is inverted: True means 'may attend', so fill the scores where mask is False"),
            Detector("softmax over queries", _sdpa_variant(dim=-2),
                     "the softmax runs over the wrong axis: each query's weights (the last axis) must sum to 1"),
        ),
    ),
    CAUSAL.id: Oracle(
        reference=causal_reference,
        detectors=(
            Detector("upper triangle", lambda inputs: {"mask": _causal(int(inputs["T"]), int(inputs["T"])).T},
                     "this is the upper triangle: query i may see keys 0..i, so True must be on and BELOW the diagonal"),
            Detector("strictly lower", lambda inputs: {"mask": np.tril(np.ones((int(inputs["T"]),) * 2, dtype=bool), k=-1)},
                     "the diagonal is missing: a token may attend to itself"),
            Detector("inverted", lambda inputs: {"mask": ~_causal(int(inputs["T"]), int(inputs["T"]))},
                     "True should mean 'may attend' (the past and the token itself)"),
        ),
    ),
    PADDING.id: Oracle(
        reference=padding_reference,
        detectors=(
            Detector("inverted", lambda inputs: {"mask": ~_padding(inputs["lengths"], int(inputs["T"]))},
                     "the mask is inverted: True marks real tokens, False the padding"),
            Detector("off by one", lambda inputs: {"mask": np.arange(int(inputs["T"]))[None, :] <= np.asarray(inputs["lengths"])[:, None]},
                     "off by one: a sequence of length L has real tokens at positions 0..L-1"),
        ),
    ),
    MHA.id: Oracle(
        reference=mha_reference,
        detectors=(
            Detector("unscaled", _mha_variant(scale=False),
                     "the scores are not divided by sqrt(d_head): each head scales by its own width, d_model // n_heads"),
            Detector("heads split without transpose", _mha_variant(no_transpose=True),
                     "the heads are split with a plain view to (B, H, T, d_head), which mixes positions: "
                     "view to (B, T, H, d_head) first, then transpose(1, 2)"),
            Detector("heads merged without transpose", _mha_variant(no_final_transpose=True),
                     "the heads' outputs (B, H, T, d_head) are reshaped straight to (B, T, d_model), which mixes "
                     "positions and heads: transpose(1, 2) back to (B, T, H, d_head) first, then reshape"),
        ),
    ),
}
