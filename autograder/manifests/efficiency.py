"""Notebook 09 - efficiency and deployment: what a decode step costs, quantization and distillation.

Every exercise has a single right answer. ``kv_cache_bytes`` and ``decode_flops_and_bytes`` are
checked on the shapes of real models (SmolLM2, Llama-2 and Llama-3), exactly. The quantizers are
checked exactly too: their inputs are built so that no value sits near a rounding boundary (each
weight is an integer step plus at most 0.4 of a step from the nearest one), so two correct
implementations that divide in a different order still agree on every integer.
"""
from __future__ import annotations

import numpy as np

from ..spec import Assignment, Case, Exercise

# Real shapes, as in each model's config.json (head_dim = hidden_size / num_attention_heads).
CONFIGS = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1000),
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152),
    "SmolLM2-360M": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, head_dim=64, vocab_size=49152),
    "SmolLM2-1.7B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, head_dim=64, vocab_size=49152),
    "Llama-2-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, head_dim=128, vocab_size=32000),
    "Llama-3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256),
}
CONFIG_KEYS = tuple(CONFIGS["tiny"])


def config_inputs(params, rng):
    config = CONFIGS[params["model"]]
    return {"config": np.array([config[key] for key in CONFIG_KEYS], dtype=np.int64),
            "batch": np.asarray(params.get("batch", 1)), "seq_len": np.asarray(params["seq_len"]),
            "dtype_bytes": np.asarray(params.get("dtype_bytes", 2))}


# --------------------------------------------------------------------------- efficiency.kv_cache_bytes


def call_kv(fn, inputs):
    import types

    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size")
    config = types.SimpleNamespace(**{key: int(value) for key, value in zip(keys, inputs["config"])})
    result = fn(config, int(inputs["batch"]), int(inputs["seq_len"]), int(inputs["dtype_bytes"]))
    if hasattr(result, "item"):
        result = result.item()
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    if type(result) is not int:
        raise TypeError(f"kv_cache_bytes must return a whole number of bytes (an int), got {result!r}")
    return {"bytes": result}


KV_CACHE_BYTES = Exercise(
    id="efficiency.kv_cache_bytes",
    callable="kv_cache_bytes",
    points=2,
    summary="bytes of the K/V cache: 2 * layers * batch * seq_len * num_key_value_heads * head_dim * dtype_bytes",
    make_inputs=config_inputs,
    call=call_kv,
    cases=(
        Case("a tiny model", {"model": "tiny", "batch": 3, "seq_len": 10, "dtype_bytes": 4}),
        Case("SmolLM2-360M, 2k tokens in bf16", {"model": "SmolLM2-360M", "batch": 1, "seq_len": 2048}),
        Case("Llama-3-8B, a batch of 8 at 8k", {"model": "Llama-3-8B", "batch": 8, "seq_len": 8192}, hidden=True),
        Case("Llama-2-7B, 4k", {"model": "Llama-2-7B", "batch": 2, "seq_len": 4096}, hidden=True),
        Case("SmolLM2-135M, fp32", {"model": "SmolLM2-135M", "batch": 16, "seq_len": 512, "dtype_bytes": 4},
             hidden=True),
    ),
    reference_impl="utils.efficiency:kv_cache_bytes",
)

# --------------------------------------------------------------------------- efficiency.decode_flops_and_bytes


def call_decode(fn, inputs):
    import types

    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size")
    config = types.SimpleNamespace(**{key: int(value) for key, value in zip(keys, inputs["config"])})
    result = fn(config, int(inputs["seq_len"]), dtype_bytes=int(inputs["dtype_bytes"]))
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"decode_flops_and_bytes must return a tuple (flops, bytes), got {type(result).__name__}")
    values = []
    for name, value in zip(("flops", "bytes"), result):
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not int:
            raise TypeError(f"{name} must be a whole number (an int), got {value!r}")
        values.append(value)
    return {"flops": values[0], "bytes": values[1]}


DECODE_FLOPS_AND_BYTES = Exercise(
    id="efficiency.decode_flops_and_bytes",
    callable="decode_flops_and_bytes",
    points=3,
    summary="one decode step: 2 FLOPs per matmul weight + 4*L*h*d_h*seq_len; bytes of the weights + the K/V cache",
    make_inputs=config_inputs,
    call=call_decode,
    cases=(
        Case("a tiny model", {"model": "tiny", "seq_len": 7, "dtype_bytes": 4}),
        Case("SmolLM2-360M at 1k tokens, bf16", {"model": "SmolLM2-360M", "seq_len": 1024}),
        Case("Llama-3-8B at 8k, bf16", {"model": "Llama-3-8B", "seq_len": 8192}, hidden=True),
        Case("SmolLM2-1.7B, no GQA", {"model": "SmolLM2-1.7B", "seq_len": 300, "dtype_bytes": 4}, hidden=True),
        Case("SmolLM2-135M at 100 tokens", {"model": "SmolLM2-135M", "seq_len": 100, "dtype_bytes": 4}, hidden=True),
    ),
    reference_impl="utils.efficiency:decode_flops_and_bytes",
)

# --------------------------------------------------------------------------- efficiency.quantize_absmax_int8


def int8_weights(params, rng):
    """A weight whose every entry is k + u steps of its group's scale, k an integer, |u| <= 0.4, and
    whose largest |entry| in each group is exactly 127 steps: rounding is never a coin toss."""
    shape, dim = tuple(params["shape"]), params.get("dim")
    n_groups = 1 if dim is None else shape[dim]
    group_shape = [1] * len(shape)
    if dim is not None:
        group_shape[dim] = n_groups
    scale = np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), size=n_groups)).reshape(group_shape)
    steps = rng.integers(-126, 127, size=shape) + rng.uniform(-0.4, 0.4, size=shape)
    steps = np.moveaxis(steps, dim if dim is not None else 0, 0).copy()          # groups first
    flat = steps.reshape(n_groups, -1) if dim is not None else steps.reshape(1, -1)
    for group in range(flat.shape[0]):                                         # one entry at +-127 steps
        flat[group, rng.integers(flat.shape[1])] = 127.0 * rng.choice([-1.0, 1.0])
    steps = np.moveaxis(flat.reshape(steps.shape), 0, dim if dim is not None else 0)
    w = (steps * scale).astype(np.float32)
    for row in params.get("zero_rows", ()):                                     # an all-zero output channel
        w[row] = 0.0
    return w


def int8_inputs(params, rng):
    dim = params.get("dim")
    return {"w": int8_weights(params, rng), "dim": np.asarray(-1 if dim is None else dim)}


def call_int8(fn, inputs):
    import math

    import torch

    w = torch.tensor(inputs["w"])
    original = w.clone()
    dim = None if int(inputs["dim"]) < 0 else int(inputs["dim"])
    result = fn(w, dim)
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"quantize_absmax_int8 must return a tuple (q, scale), got {type(result).__name__}")
    q, scale = result
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        raise TypeError(f"q must be a torch.int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    if not torch.equal(w, original):
        raise ValueError("w was changed in place")
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a tensor, got {type(scale).__name__}")
    expected = [1] * w.dim()
    if dim is not None:
        expected[dim] = w.shape[dim]
    if scale.numel() != math.prod(expected) or (dim is not None and scale.dim() != w.dim()):
        raise ValueError(f"scale has shape {tuple(scale.shape)}: with dim={dim} it must broadcast against w "
                         f"{tuple(w.shape)} with one value per group, shape {tuple(expected) if dim is not None else ()}")
    return {"q": q, "scale": scale.float().reshape(expected)}


QUANTIZE_INT8 = Exercise(
    id="efficiency.quantize_absmax_int8",
    callable="quantize_absmax_int8",
    points=3,
    summary="symmetric int8: scale = max|w| / 127 per tensor or per index of `dim`, q = round(w / scale) as int8",
    make_inputs=int8_inputs,
    call=call_int8,
    atol=0.0,
    rtol=1e-5,
    cases=(
        Case("per tensor", {"shape": (6, 10)}),
        Case("per output channel (dim=0)", {"shape": (8, 12), "dim": 0}),
        Case("per input channel (dim=1)", {"shape": (5, 16), "dim": 1}),
        Case("a channel of zeros", {"shape": (4, 9), "dim": 0, "zero_rows": (2,)}),
        Case("a 3-D tensor, dim=1", {"shape": (3, 7, 11), "dim": 1}, hidden=True),
        Case("a large matrix per channel", {"shape": (96, 64), "dim": 0}, hidden=True),
        Case("per tensor, a vector", {"shape": (50,)}, hidden=True),
    ),
    library=("quantize_per_tensor", "quantize_per_channel", "quantize_dynamic", "Int8WeightOnlyConfig"),
    reference_impl="utils.efficiency:quantize_absmax_int8",
)

# --------------------------------------------------------------------------- efficiency.dequantize


def dequantize_inputs(params, rng):
    shape = tuple(params["shape"])
    q = rng.integers(-127, 128, size=shape).astype(np.int8)
    scale_shape = params.get("scale_shape", ())
    scale = np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), size=scale_shape)).astype(np.float32)
    return {"q": q, "scale": scale}


def call_dequantize(fn, inputs):
    import torch

    return {"w": fn(torch.tensor(inputs["q"]), torch.tensor(inputs["scale"]))}


DEQUANTIZE = Exercise(
    id="efficiency.dequantize",
    callable="dequantize",
    points=1,
    summary="int8 back to float32: q * scale (scale broadcasts)",
    make_inputs=dequantize_inputs,
    call=call_dequantize,
    atol=1e-7,
    rtol=1e-6,
    cases=(
        Case("per tensor", {"shape": (4, 6)}),
        Case("per output channel", {"shape": (5, 3), "scale_shape": (5, 1)}),
        Case("per input channel", {"shape": (16, 32), "scale_shape": (1, 32)}, hidden=True),
    ),
    reference_impl="utils.efficiency:dequantize",
)

# --------------------------------------------------------------------------- efficiency.quantize_int4_groupwise


def int4_weights(params, rng):
    """(out, in) weights whose groups each span exactly 15 steps from their minimum, every entry an
    integer step plus at most 0.4 of a step; ``constant_group`` makes one group all equal."""
    out_features, in_features, g = params["out"], params["in"], params["group_size"]
    n_groups = in_features // g
    scale = np.exp(rng.uniform(np.log(1e-3), np.log(5e-2), size=(out_features, n_groups, 1)))
    low = rng.uniform(-0.5, 0.0, size=(out_features, n_groups, 1))
    steps = np.clip(rng.integers(0, 16, size=(out_features, n_groups, g)) + rng.uniform(-0.4, 0.4, size=(out_features, n_groups, g)), 0, 15)
    picks = np.argsort(rng.random((out_features, n_groups, g)), axis=-1)[..., :2]   # two distinct positions per group
    np.put_along_axis(steps, picks[..., :1], 0.0, axis=-1)                           # the minimum ...
    np.put_along_axis(steps, picks[..., 1:], 15.0, axis=-1)                          # ... and the maximum
    w = (low + steps * scale).astype(np.float32).reshape(out_features, in_features)
    if params.get("constant_group"):
        w[0, :g] = w[0, 0]
    return w


def int4_inputs(params, rng):
    return {"w": int4_weights(params, rng), "group_size": np.asarray(params["group_size"])}


def call_int4(fn, inputs):
    import torch

    w = torch.tensor(inputs["w"])
    original = w.clone()
    result = fn(w, int(inputs["group_size"]))
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError("quantize_int4_groupwise must return a tuple (packed, scale, minimum), "
                        f"got {type(result).__name__}")
    packed, scale, minimum = result
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a torch.uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    if not torch.equal(w, original):
        raise ValueError("w was changed in place")
    return {"packed": packed, "scale": scale, "minimum": minimum}


QUANTIZE_INT4 = Exercise(
    id="efficiency.quantize_int4_groupwise",
    callable="quantize_int4_groupwise",
    points=4,
    summary="asymmetric int4 per group of `group_size` inputs: scale = (max - min) / 15, q in [0, 15], two per byte",
    make_inputs=int4_inputs,
    call=call_int4,
    atol=1e-7,
    rtol=1e-5,
    cases=(
        Case("one row, groups of 4", {"out": 1, "in": 8, "group_size": 4}),
        Case("groups of 32", {"out": 6, "in": 64, "group_size": 32}),
        Case("a constant group", {"out": 3, "in": 16, "group_size": 8, "constant_group": True}),
        Case("groups of 128", {"out": 16, "in": 256, "group_size": 128}, hidden=True),
        Case("one group per row", {"out": 10, "in": 32, "group_size": 32}, hidden=True),
        Case("groups of 2", {"out": 5, "in": 12, "group_size": 2}, hidden=True),
    ),
    library=("quantize_4bit", "Int4WeightOnlyConfig", "qint4", "quantize_"),
    reference_impl="utils.efficiency:quantize_int4_groupwise",
)

# --------------------------------------------------------------------------- efficiency.dequantize_int4_groupwise


def int4_dequantize_inputs(params, rng):
    out_features, in_features, g = params["out"], params["in"], params["group_size"]
    return {"packed": rng.integers(0, 256, size=(out_features, in_features // 2)).astype(np.uint8),
            "scale": rng.uniform(1e-3, 5e-2, size=(out_features, in_features // g)).astype(np.float32),
            "minimum": rng.uniform(-0.5, 0.0, size=(out_features, in_features // g)).astype(np.float32),
            "group_size": np.asarray(g)}


def call_int4_dequantize(fn, inputs):
    import torch

    return {"w": fn(torch.tensor(inputs["packed"]), torch.tensor(inputs["scale"]), torch.tensor(inputs["minimum"]),
                    int(inputs["group_size"]))}


DEQUANTIZE_INT4 = Exercise(
    id="efficiency.dequantize_int4_groupwise",
    callable="dequantize_int4_groupwise",
    points=2,
    summary="unpack two 4-bit values per byte (low nibble first), then q * scale + minimum per group",
    make_inputs=int4_dequantize_inputs,
    call=call_int4_dequantize,
    atol=1e-6,
    rtol=1e-5,
    cases=(
        Case("one row, groups of 4", {"out": 1, "in": 8, "group_size": 4}),
        Case("groups of 32", {"out": 4, "in": 64, "group_size": 32}),
        Case("groups of 128", {"out": 8, "in": 256, "group_size": 128}, hidden=True),
        Case("groups of 2", {"out": 3, "in": 10, "group_size": 2}, hidden=True),
    ),
    reference_impl="utils.efficiency:dequantize_int4_groupwise",
)

# --------------------------------------------------------------------------- efficiency.quant_linear


def quant_linear_inputs(params, rng):
    out_features, in_features = params["out"], params["in"]
    inputs = {"weight": (0.05 * rng.standard_normal((out_features, in_features))).astype(np.float32),
              "x": rng.standard_normal(tuple(params["x_shape"]) + (in_features,)).astype(np.float32),
              "bits": np.asarray(params["bits"]), "group_size": np.asarray(params.get("group_size", 32))}
    if params.get("bias", True):
        inputs["bias"] = (0.1 * rng.standard_normal(out_features)).astype(np.float32)
    return inputs


def call_quant_linear(fn, inputs):
    import torch

    weight = torch.tensor(inputs["weight"])
    out_features, in_features = weight.shape
    linear = torch.nn.Linear(in_features, out_features, bias="bias" in inputs)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if "bias" in inputs:
            linear.bias.copy_(torch.tensor(inputs["bias"]))
    module = fn(linear, bits=int(inputs["bits"]), group_size=int(inputs["group_size"]))
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"QuantLinear(linear, bits, group_size) must build an nn.Module, got {type(module).__name__}")
    floats = sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())
    stored = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    with torch.no_grad():
        y = module(torch.tensor(inputs["x"]))
    return {"y": y,
            # no float copy of the weight is kept: only scales (and minima) and the bias are floats
            "no_float_weight": bool(floats < weight.numel() // 4),
            # at most half the bytes of the float32 weight (int8 in int64 would not be)
            "compressed": bool(stored <= 2 * weight.numel() + 4 * out_features)}


QUANT_LINEAR = Exercise(
    id="efficiency.quant_linear",
    callable="QuantLinear",
    points=3,
    summary="nn.Module from an nn.Linear: stores the weight as int8 (per channel) or packed int4 (per group); "
            "forward = x @ dequantized W^T + b",
    make_inputs=quant_linear_inputs,
    call=call_quant_linear,
    atol=1e-5,
    rtol=1e-4,
    cases=(
        Case("int8, with bias", {"out": 12, "in": 16, "bits": 8, "x_shape": (2, 3)}),
        Case("int4, groups of 16", {"out": 6, "in": 32, "bits": 4, "group_size": 16, "x_shape": (5,)}),
        Case("int4, no bias", {"out": 10, "in": 64, "bits": 4, "group_size": 32, "x_shape": (2, 4), "bias": False}),
        Case("int8, no bias", {"out": 32, "in": 48, "bits": 8, "x_shape": (3, 2), "bias": False}, hidden=True),
        Case("int4, groups of 128", {"out": 24, "in": 256, "bits": 4, "group_size": 128, "x_shape": (1, 7)},
             hidden=True),
    ),
    builds_on=("efficiency.quantize_absmax_int8", "efficiency.dequantize", "efficiency.quantize_int4_groupwise",
               "efficiency.dequantize_int4_groupwise"),
    library=("quantize_dynamic", "QLinear", "quantize_"),
    reference_impl="utils.efficiency:QuantLinear",
)

# --------------------------------------------------------------------------- efficiency.distillation_loss


def distill_inputs(params, rng):
    shape, V = tuple(params["shape"]), params["V"]
    teacher = (2.0 * rng.standard_normal(shape + (V,))).astype(np.float32)
    student = (teacher * rng.uniform(0.3, 1.0) + 1.5 * rng.standard_normal(shape + (V,))).astype(np.float32)
    return {"student_logits": student, "teacher_logits": teacher, "labels": rng.integers(0, V, size=shape),
            "T": np.asarray(float(params["T"])), "alpha": np.asarray(float(params["alpha"]))}


def call_distill(fn, inputs):
    import torch

    student = torch.tensor(inputs["student_logits"], requires_grad=True)
    teacher = torch.tensor(inputs["teacher_logits"], requires_grad=True)
    loss = fn(student, teacher, torch.tensor(inputs["labels"]), T=float(inputs["T"]), alpha=float(inputs["alpha"]))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
        raise TypeError("the loss must be a scalar tensor still connected to the student's logits (no .item())")
    loss.backward()
    teacher_grad = teacher.grad
    return {"loss": loss, "grad": student.grad,
            "teacher_untouched": bool(teacher_grad is None or not bool(teacher_grad.abs().sum() > 0))}


DISTILLATION_LOSS = Exercise(
    id="efficiency.distillation_loss",
    callable="distillation_loss",
    points=3,
    summary="Hinton's loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)",
    make_inputs=distill_inputs,
    call=call_distill,
    atol=1e-5,
    rtol=1e-4,
    cases=(
        Case("T = 1, alpha = 0.5", {"shape": (4,), "V": 7, "T": 1.0, "alpha": 0.5}),
        Case("T = 2, a (B, T) batch", {"shape": (2, 5), "V": 11, "T": 2.0, "alpha": 0.7}),
        Case("T = 4, soft targets only", {"shape": (6,), "V": 9, "T": 4.0, "alpha": 1.0}),
        Case("T = 3, alpha = 0.9", {"shape": (3, 8), "V": 65, "T": 3.0, "alpha": 0.9}, hidden=True),
        Case("hard labels only", {"shape": (10,), "V": 5, "T": 2.0, "alpha": 0.0}, hidden=True),
        Case("T = 0.5", {"shape": (2, 3), "V": 20, "T": 0.5, "alpha": 0.5}, hidden=True),
    ),
    library=("DistillationTrainer",),
    reference_impl="utils.efficiency:distillation_loss",
)

ASSIGNMENT = Assignment(
    notebook="09_efficiency",
    title="Efficiency and deployment",
    exercises=(KV_CACHE_BYTES, DECODE_FLOPS_AND_BYTES, QUANTIZE_INT8, DEQUANTIZE, QUANTIZE_INT4, DEQUANTIZE_INT4,
               QUANT_LINEAR, DISTILLATION_LOSS),
    references=("utils.efficiency",),
)
