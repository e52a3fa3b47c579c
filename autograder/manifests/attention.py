"""Notebook 01 - attention: scaled dot-product attention, masks and multi-head attention.

Oracles: ``torch.nn.functional.scaled_dot_product_attention`` and ``torch.nn.MultiheadAttention``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..spec import Assignment, Case, Detector, Exercise

# --------------------------------------------------------------------------- shared input helpers


def _causal(t_q: int, t_k: int) -> np.ndarray:
    return np.tril(np.ones((t_q, t_k), dtype=bool), k=t_k - t_q)


def _padding(lengths, t: int) -> np.ndarray:
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def _t(inputs, key):
    return torch.from_numpy(np.array(inputs[key], copy=True))


# --------------------------------------------------------------------------- attention.sdpa


def sdpa_inputs(params, rng):
    """q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v), optional bool mask; scale sets |q.k|."""
    batch = tuple(params.get("batch", ()))
    t_q, t_k, d, d_v = params["t_q"], params.get("t_k", params["t_q"]), params["d"], params.get("d_v", params["d"])
    scale = params.get("scale", 1.0)
    inputs = {
        "q": (scale * rng.standard_normal(batch + (t_q, d))).astype(np.float32),
        "k": (scale * rng.standard_normal(batch + (t_k, d))).astype(np.float32),
        "v": rng.standard_normal(batch + (t_k, d_v)).astype(np.float32),
    }
    mask = params.get("mask")
    if mask == "causal":
        inputs["mask"] = _causal(t_q, t_k)
    elif mask == "padding":  # (B, 1, 1, T_k): every query of sequence b sees its first lengths[b] keys
        lengths = rng.integers(1, t_k + 1, size=batch[0])
        lengths[0] = t_k
        inputs["mask"] = _padding(lengths, t_k)[:, None, None, :]
    return inputs


def call_sdpa(fn, inputs):
    import torch

    q, k, v = (torch.tensor(inputs[name]) for name in ("q", "k", "v"))
    mask = torch.tensor(inputs["mask"]) if "mask" in inputs else None
    result = fn(q, k, v, mask=mask)
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"must return a tuple (output, weights), got {type(result).__name__}")
    return {"output": result[0], "weights": result[1]}


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


SDPA = Exercise(
    id="attention.sdpa",
    callable="scaled_dot_product_attention",
    points=3,
    summary="softmax(q k^T / sqrt(d)) v with an optional boolean mask, returning (output, weights)",
    make_inputs=sdpa_inputs,
    call=call_sdpa,
    reference=sdpa_reference,
    cases=(
        Case("2-D, like the seed", {"t_q": 5, "d": 8}),
        Case("batched heads, causal", {"batch": (2, 3), "t_q": 6, "d": 16, "mask": "causal"}),
        Case("T_q != T_k, d_v != d", {"batch": (2,), "t_q": 3, "t_k": 7, "d": 4, "d_v": 6}),
        Case("padding mask (B,1,1,T)", {"batch": (3, 2), "t_q": 5, "d": 8, "mask": "padding"}),
        Case("large d", {"batch": (2,), "t_q": 9, "d": 64, "scale": 2.0}, hidden=True),
        Case("causal, T_q < T_k", {"batch": (2, 4), "t_q": 4, "t_k": 10, "d": 32, "mask": "causal"}, hidden=True),
        Case("padding, many heads", {"batch": (4, 8), "t_q": 12, "d": 16, "mask": "padding", "scale": 1.5}, hidden=True),
    ),
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
)

# --------------------------------------------------------------------------- attention.causal_mask


def causal_inputs(params, rng):
    return {"T": np.asarray(params["T"])}


def call_causal(fn, inputs):
    return {"mask": fn(int(inputs["T"]))}


def causal_reference(inputs):
    return {"mask": _causal(int(inputs["T"]), int(inputs["T"]))}


CAUSAL = Exercise(
    id="attention.causal_mask",
    callable="causal_mask",
    points=1,
    summary="a (T, T) boolean mask, True on and below the diagonal",
    make_inputs=causal_inputs,
    call=call_causal,
    reference=causal_reference,
    cases=(Case("T=2", {"T": 2}), Case("T=5", {"T": 5}), Case("T=7", {"T": 7}, hidden=True),
           Case("T=33", {"T": 33}, hidden=True)),
    detectors=(
        Detector("upper triangle", lambda inputs: {"mask": _causal(int(inputs["T"]), int(inputs["T"])).T},
                 "this is the upper triangle: query i may see keys 0..i, so True must be on and BELOW the diagonal"),
        Detector("strictly lower", lambda inputs: {"mask": np.tril(np.ones((int(inputs["T"]),) * 2, dtype=bool), k=-1)},
                 "the diagonal is missing: a token may attend to itself"),
        Detector("inverted", lambda inputs: {"mask": ~_causal(int(inputs["T"]), int(inputs["T"]))},
                 "True should mean 'may attend' (the past and the token itself)"),
    ),
)

# --------------------------------------------------------------------------- attention.padding_mask


def padding_inputs(params, rng):
    lengths = rng.integers(1, params["T"] + 1, size=params["B"])
    lengths[0] = params["T"]
    return {"lengths": lengths.astype(np.int64), "T": np.asarray(params["T"])}


def call_padding(fn, inputs):
    import torch

    return {"mask": fn(torch.tensor(inputs["lengths"]), int(inputs["T"]))}


def padding_reference(inputs):
    return {"mask": _padding(inputs["lengths"], int(inputs["T"]))}


PADDING = Exercise(
    id="attention.padding_mask",
    callable="padding_mask",
    points=2,
    summary="a (B, T) boolean mask, True for the first lengths[b] positions of sequence b",
    make_inputs=padding_inputs,
    call=call_padding,
    reference=padding_reference,
    cases=(Case("B=3, T=6", {"B": 3, "T": 6}), Case("B=1, T=4", {"B": 1, "T": 4}),
           Case("B=8, T=20", {"B": 8, "T": 20}, hidden=True)),
    detectors=(
        Detector("inverted", lambda inputs: {"mask": ~_padding(inputs["lengths"], int(inputs["T"]))},
                 "the mask is inverted: True marks real tokens, False the padding"),
        Detector("off by one", lambda inputs: {"mask": np.arange(int(inputs["T"]))[None, :] <= np.asarray(inputs["lengths"])[:, None]},
                 "off by one: a sequence of length L has real tokens at positions 0..L-1"),
    ),
)

# --------------------------------------------------------------------------- attention.mha


def mha_inputs(params, rng):
    d, heads, batch, t = params["d_model"], params["n_heads"], params["B"], params["T"]
    bound = 1 / math.sqrt(d)
    inputs = {
        "d_model": np.asarray(d), "n_heads": np.asarray(heads),
        "x": rng.standard_normal((batch, t, d)).astype(np.float32),
        "in_proj_weight": rng.uniform(-bound, bound, (3 * d, d)).astype(np.float32),
        "in_proj_bias": rng.uniform(-bound, bound, 3 * d).astype(np.float32),
        "out_proj_weight": rng.uniform(-bound, bound, (d, d)).astype(np.float32),
        "out_proj_bias": rng.uniform(-bound, bound, d).astype(np.float32),
    }
    if params.get("mask") == "causal":
        inputs["mask"] = _causal(t, t)
    elif params.get("mask") == "padding":
        lengths = rng.integers(1, t + 1, size=batch)
        lengths[0] = t
        inputs["mask"] = _padding(lengths, t)[:, None, None, :]  # (B, 1, 1, T)
    return inputs


def call_mha(fn, inputs):
    import torch

    d, heads = int(inputs["d_model"]), int(inputs["n_heads"])
    module = fn(d, heads)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"MultiHeadAttention(d_model, n_heads) must build an nn.Module, got {type(module).__name__}")
    w_q, w_k, w_v = torch.tensor(inputs["in_proj_weight"]).chunk(3)
    b_q, b_k, b_v = torch.tensor(inputs["in_proj_bias"]).chunk(3)
    weights = {"q_proj": (w_q, b_q), "k_proj": (w_k, b_k), "v_proj": (w_v, b_v),
               "out_proj": (torch.tensor(inputs["out_proj_weight"]), torch.tensor(inputs["out_proj_bias"]))}
    with torch.no_grad():
        for name, (weight, bias) in weights.items():
            layer = getattr(module, name, None)
            if not isinstance(layer, torch.nn.Linear):
                raise AttributeError(f"the module needs an nn.Linear called `{name}` (found {type(layer).__name__})")
            if tuple(layer.weight.shape) != tuple(weight.shape) or layer.bias is None:
                raise ValueError(f"`{name}` must be nn.Linear({d}, {d}) with a bias; "
                                 f"its weight has shape {tuple(layer.weight.shape)}")
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    module.eval()
    mask = torch.tensor(inputs["mask"]) if "mask" in inputs else None
    with torch.no_grad():
        return {"output": module(torch.tensor(inputs["x"]), mask=mask)}


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


def _mha_variant(scale=True, no_transpose=False):
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
        out = out.transpose(1, 2).reshape(batch, t, d)
        return {"output": out @ _t(inputs, "out_proj_weight").T + _t(inputs, "out_proj_bias")}

    return produce


MHA = Exercise(
    id="attention.mha",
    callable="MultiHeadAttention",
    points=4,
    summary="nn.Module with q_proj, k_proj, v_proj, out_proj; forward(x, mask=None) -> (B, T, d_model)",
    make_inputs=mha_inputs,
    call=call_mha,
    reference=mha_reference,
    atol=1e-5,
    rtol=1e-4,
    cases=(
        Case("B=2, T=5, d=16, 4 heads", {"B": 2, "T": 5, "d_model": 16, "n_heads": 4}),
        Case("causal mask", {"B": 2, "T": 6, "d_model": 32, "n_heads": 8, "mask": "causal"}),
        Case("padding mask", {"B": 3, "T": 7, "d_model": 24, "n_heads": 3, "mask": "padding"}),
        Case("one head", {"B": 1, "T": 4, "d_model": 8, "n_heads": 1}, hidden=True),
        Case("wide, causal", {"B": 2, "T": 16, "d_model": 64, "n_heads": 8, "mask": "causal"}, hidden=True),
    ),
    detectors=(
        Detector("unscaled", _mha_variant(scale=False),
                 "the scores are not divided by sqrt(d_head): each head scales by its own width, d_model // n_heads"),
        Detector("heads split without transpose", _mha_variant(no_transpose=True),
                 "the heads are split with a plain view to (B, H, T, d_head), which mixes positions: "
                 "view to (B, T, H, d_head) first, then transpose(1, 2)"),
    ),
)

ASSIGNMENT = Assignment(
    notebook="01_attention",
    title="Attention",
    exercises=(SDPA, CAUSAL, PADDING, MHA),
)
