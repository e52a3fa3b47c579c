"""Notebook 01 - attention: scaled dot-product attention, masks and multi-head attention.

Oracles: ``torch.nn.functional.scaled_dot_product_attention`` and ``torch.nn.MultiheadAttention``.
"""
from __future__ import annotations

import math

import numpy as np

from ..spec import Assignment, Case, Exercise

# --------------------------------------------------------------------------- shared input helpers


def _causal(t_q: int, t_k: int) -> np.ndarray:
    return np.tril(np.ones((t_q, t_k), dtype=bool), k=t_k - t_q)


def _padding(lengths, t: int) -> np.ndarray:
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


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


SDPA = Exercise(
    id="attention.sdpa",
    callable="scaled_dot_product_attention",
    points=3,
    summary="softmax(q k^T / sqrt(d)) v with an optional boolean mask, returning (output, weights)",
    make_inputs=sdpa_inputs,
    call=call_sdpa,
    cases=(
        Case("2-D, like the seed", {"t_q": 5, "d": 8}),
        Case("batched heads, causal", {"batch": (2, 3), "t_q": 6, "d": 16, "mask": "causal"}),
        Case("T_q != T_k, d_v != d", {"batch": (2,), "t_q": 3, "t_k": 7, "d": 4, "d_v": 6}),
        Case("padding mask (B,1,1,T)", {"batch": (3, 2), "t_q": 5, "d": 8, "mask": "padding"}),
        Case("large d", {"batch": (2,), "t_q": 9, "d": 64, "scale": 2.0}, hidden=True),
        Case("causal, T_q < T_k", {"batch": (2, 4), "t_q": 4, "t_k": 10, "d": 32, "mask": "causal"}, hidden=True),
        Case("padding, many heads", {"batch": (4, 8), "t_q": 12, "d": 16, "mask": "padding", "scale": 1.5}, hidden=True),
    ),
    library=("scaled_dot_product_attention",),
    reference_impl="utils.attention:scaled_dot_product_attention",
)

# --------------------------------------------------------------------------- attention.causal_mask


def causal_inputs(params, rng):
    return {"T": np.asarray(params["T"])}


def call_causal(fn, inputs):
    return {"mask": fn(int(inputs["T"]))}


CAUSAL = Exercise(
    id="attention.causal_mask",
    callable="causal_mask",
    points=1,
    summary="a (T, T) boolean mask, True on and below the diagonal",
    make_inputs=causal_inputs,
    call=call_causal,
    cases=(Case("T=2", {"T": 2}), Case("T=5", {"T": 5}), Case("T=7", {"T": 7}, hidden=True),
           Case("T=33", {"T": 33}, hidden=True)),
    reference_impl="utils.attention:causal_mask",
)

# --------------------------------------------------------------------------- attention.padding_mask


def padding_inputs(params, rng):
    lengths = rng.integers(1, params["T"] + 1, size=params["B"])
    lengths[0] = params["T"]
    return {"lengths": lengths.astype(np.int64), "T": np.asarray(params["T"])}


def call_padding(fn, inputs):
    import torch

    return {"mask": fn(torch.tensor(inputs["lengths"]), int(inputs["T"]))}


PADDING = Exercise(
    id="attention.padding_mask",
    callable="padding_mask",
    points=2,
    summary="a (B, T) boolean mask, True for the first lengths[b] positions of sequence b",
    make_inputs=padding_inputs,
    call=call_padding,
    cases=(Case("B=3, T=6", {"B": 3, "T": 6}), Case("B=1, T=4", {"B": 1, "T": 4}),
           Case("B=8, T=20", {"B": 8, "T": 20}, hidden=True)),
    reference_impl="utils.attention:padding_mask",
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


MHA = Exercise(
    id="attention.mha",
    callable="MultiHeadAttention",
    points=4,
    summary="nn.Module with q_proj, k_proj, v_proj, out_proj; forward(x, mask=None) -> (B, T, d_model)",
    make_inputs=mha_inputs,
    call=call_mha,
    atol=1e-5,
    rtol=1e-4,
    cases=(
        Case("B=2, T=5, d=16, 4 heads", {"B": 2, "T": 5, "d_model": 16, "n_heads": 4}),
        Case("causal mask", {"B": 2, "T": 6, "d_model": 32, "n_heads": 8, "mask": "causal"}),
        Case("padding mask", {"B": 3, "T": 7, "d_model": 24, "n_heads": 3, "mask": "padding"}),
        Case("one head", {"B": 1, "T": 4, "d_model": 8, "n_heads": 1}, hidden=True),
        Case("wide, causal", {"B": 2, "T": 16, "d_model": 64, "n_heads": 8, "mask": "causal"}, hidden=True),
    ),
    library=("MultiheadAttention",),
    reference_impl="utils.attention:MultiHeadAttention",
)

ASSIGNMENT = Assignment(
    notebook="01_attention",
    title="Attention",
    exercises=(SDPA, CAUSAL, PADDING, MHA),
    references=("utils.attention",),
)
