"""Notebook 09, trusted side: references and known mistakes.

No library computes a KV cache's size, a decode step's FLOPs, absmax int8 with this exact contract
or Hinton's loss, so the references are the course's code in ``utils.efficiency``; the tests check
that code against outside measurements (the bytes of a real ``DynamicCache``, PyTorch's
``FlopCounterMode`` on a real Llama decode step, ``torch.quantize_per_channel``'s integers, and the
KL divergence of ``torch.distributions``).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from ..manifests.efficiency import (CONFIG_KEYS, DECODE_FLOPS_AND_BYTES, DEQUANTIZE, DEQUANTIZE_INT4,
                                    DISTILLATION_LOSS, KV_CACHE_BYTES, QUANT_LINEAR, QUANTIZE_INT4, QUANTIZE_INT8)
from ..spec import Detector, Oracle
from .common import tensor as _t


def _config(inputs, **changes):
    values = {key: int(value) for key, value in zip(CONFIG_KEYS, inputs["config"])}
    values.update(changes)
    return types.SimpleNamespace(**values)


# --------------------------------------------------------------------------- sizes and FLOPs


def kv_reference(inputs, **changes):
    from utils.efficiency import kv_cache_bytes

    return {"bytes": kv_cache_bytes(_config(inputs, **changes), int(inputs["batch"]), int(inputs["seq_len"]),
                                    int(inputs["dtype_bytes"]))}


def _kv_all_heads(inputs):
    config = _config(inputs)
    return kv_reference(inputs, num_key_value_heads=config.num_attention_heads)


def _kv_no_factor_2(inputs):
    return {"bytes": kv_reference(inputs)["bytes"] // 2}


def _kv_hidden_size(inputs):
    config = _config(inputs)
    return {"bytes": 2 * config.num_hidden_layers * int(inputs["batch"]) * int(inputs["seq_len"])
            * config.hidden_size * int(inputs["dtype_bytes"])}


def decode_reference(inputs, **changes):
    from utils.efficiency import decode_flops_and_bytes

    flops, n_bytes = decode_flops_and_bytes(_config(inputs, **changes), int(inputs["seq_len"]),
                                            dtype_bytes=int(inputs["dtype_bytes"]))
    return {"flops": flops, "bytes": n_bytes}


def _decode_variant(*, attention=True, mac=False, lm_head=True, mlp_matrices=3, kv_heads_all=False, kv_bytes=True):
    def produce(inputs):
        c = _config(inputs)
        d, ff, L, h, dh, V = (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                              c.head_dim, c.vocab_size)
        kv = h if kv_heads_all else c.num_key_value_heads
        n = int(inputs["seq_len"])
        weights = L * (2 * d * h * dh + 2 * d * kv * dh + mlp_matrices * d * ff) + (d * V if lm_head else 0)
        flops = 2 * weights + (4 * L * h * dh * n if attention else 0)
        if mac:                                  # one FLOP per multiply-add, everywhere
            flops //= 2
        cache = 2 * L * n * kv * dh if kv_bytes else 0
        return {"flops": flops, "bytes": (weights + cache) * int(inputs["dtype_bytes"])}
    return produce


# --------------------------------------------------------------------------- int8


def _int8_outputs(quantize):
    def produce(inputs):
        w = _t(inputs, "w")
        dim = None if int(inputs["dim"]) < 0 else int(inputs["dim"])
        q, scale = quantize(w, dim)
        expected = [1] * w.dim()
        if dim is not None:
            expected[dim] = w.shape[dim]
        return {"q": q, "scale": scale.float().reshape(expected)}
    return produce


def _int8_reference(w, dim):
    from utils.efficiency import quantize_absmax_int8

    return quantize_absmax_int8(w, dim)


def _absmax(w, dim):
    if dim is None:
        return w.abs().amax()
    others = tuple(i for i in range(w.dim()) if i != dim)
    return w.abs().amax(dim=others, keepdim=True)


def _int8_with(*, levels=127, rounding=torch.round, signed_max=False):
    def quantize(w, dim):
        if signed_max:
            amax = w.amax() if dim is None else w.amax(dim=tuple(i for i in range(w.dim()) if i != dim), keepdim=True)
        else:
            amax = _absmax(w, dim)
        scale = torch.where(amax > 0, amax / levels, torch.ones_like(amax))
        return rounding(w / scale).clamp(-127, 127).to(torch.int8), scale
    return quantize


def _int8_other_axis(w, dim):
    if dim is None or w.dim() < 2:
        return _int8_reference(w, dim)
    other = 1 if dim % w.dim() == 0 else 0
    q, _ = _int8_reference(w, other)
    return q, _absmax(w, dim) / 127


def _int8_no_zero_guard(w, dim):
    amax = _absmax(w, dim)
    scale = amax / 127
    return torch.nan_to_num(torch.round(w / scale), nan=0.0).clamp(-127, 127).to(torch.int8), scale


def dequantize_reference(inputs):
    return {"w": _t(inputs, "q").float() * _t(inputs, "scale")}


# --------------------------------------------------------------------------- int4


def _int4_outputs(quantize):
    def produce(inputs):
        packed, scale, minimum = quantize(_t(inputs, "w"), int(inputs["group_size"]))
        return {"packed": packed, "scale": scale, "minimum": minimum}
    return produce


def _int4_reference(w, group_size):
    from utils.efficiency import quantize_int4_groupwise

    return quantize_int4_groupwise(w, group_size)


def _int4_swapped_nibbles(w, group_size):
    packed, scale, minimum = _int4_reference(w, group_size)
    return (packed >> 4) | ((packed & 0x0F) << 4), scale, minimum


def _int4_unpacked(w, group_size):
    from utils.efficiency import unpack_int4

    packed, scale, minimum = _int4_reference(w, group_size)
    return unpack_int4(packed), scale, minimum


def _int4_symmetric(w, group_size):
    out_features, in_features = w.shape
    groups = w.reshape(out_features, -1, group_size)                               # (out, n_groups, g)
    scale = groups.abs().amax(-1) / 7
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (torch.round(groups / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8).reshape(out_features, in_features)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale, torch.full_like(scale, -8.0) * scale


def _int4_per_row(w, group_size):
    packed, _, _ = _int4_reference(w, w.shape[1])
    _, scale, minimum = _int4_reference(w, group_size)
    return packed, scale, minimum


def _int4_scale_16(w, group_size):
    out_features, in_features = w.shape
    groups = w.reshape(out_features, -1, group_size)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = torch.where(high > low, (high - low) / 16, torch.ones_like(low))
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.reshape(out_features, in_features)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale, low


def dequantize_int4_reference(inputs):
    from utils.efficiency import dequantize_int4_groupwise

    return {"w": dequantize_int4_groupwise(_t(inputs, "packed"), _t(inputs, "scale"), _t(inputs, "minimum"),
                                           int(inputs["group_size"]))}


def _dequantize_int4_high_first(inputs):
    packed = _t(inputs, "packed")
    swapped = (packed >> 4) | ((packed & 0x0F) << 4)
    return dequantize_int4_reference({**inputs, "packed": swapped.numpy()})


def _dequantize_int4_no_minimum(inputs):
    from utils.efficiency import dequantize_int4_groupwise

    scale = _t(inputs, "scale")
    return {"w": dequantize_int4_groupwise(_t(inputs, "packed"), scale, torch.zeros_like(scale),
                                           int(inputs["group_size"]))}


# --------------------------------------------------------------------------- QuantLinear


def _quant_linear_outputs(weight_of, compressed=True):
    def produce(inputs):
        w = _t(inputs, "weight")
        bias = _t(inputs, "bias") if "bias" in inputs else None
        w_hat = weight_of(w, int(inputs["bits"]), int(inputs["group_size"]))
        return {"y": F.linear(_t(inputs, "x"), w_hat, bias), "no_float_weight": compressed, "compressed": compressed}
    return produce


def _dequantized(w, bits, group_size):
    from utils.efficiency import QuantLinear

    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    return QuantLinear(linear, bits=bits, group_size=group_size).weight_hat()


def _integers_as_weights(w, bits, group_size):
    from utils.efficiency import quantize_absmax_int8, quantize_int4_groupwise, unpack_int4

    if bits == 8:
        return quantize_absmax_int8(w, dim=0)[0].float()
    return unpack_int4(quantize_int4_groupwise(w, group_size)[0]).float()


def _per_tensor_int8(w, bits, group_size):
    from utils.efficiency import dequantize, quantize_absmax_int8

    if bits == 8:
        return dequantize(*quantize_absmax_int8(w, dim=None))
    return _dequantized(w, bits, group_size)


# --------------------------------------------------------------------------- distillation


def _distill_outputs(loss_of):
    def produce(inputs):
        student = _t(inputs, "student_logits").requires_grad_(True)
        loss = loss_of(student, _t(inputs, "teacher_logits"), _t(inputs, "labels"), float(inputs["T"]),
                       float(inputs["alpha"]))
        loss.backward()
        return {"loss": loss.detach(), "grad": student.grad, "teacher_untouched": True}
    return produce


def _teacher_gets_gradient(inputs):
    return {**_distill_outputs(_distill_reference)(inputs), "teacher_untouched": False}


def _distill_reference(s, t, labels, T, alpha):
    from utils.efficiency import distillation_loss

    return distillation_loss(s, t, labels, T=T, alpha=alpha)


def _parts(s, t, labels, T):
    V = s.shape[-1]
    return s.reshape(-1, V), t.reshape(-1, V), labels.reshape(-1)


def _distill_no_t2(s, t, labels, T, alpha):
    s, t, labels = _parts(s, t, labels, T)
    soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    return alpha * soft + (1 - alpha) * F.cross_entropy(s, labels)


def _distill_reverse_kl(s, t, labels, T, alpha):
    s, t, labels = _parts(s, t, labels, T)
    soft = F.kl_div(F.log_softmax(t / T, -1), F.log_softmax(s / T, -1), log_target=True, reduction="batchmean")
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, labels)


def _distill_alpha_swapped(s, t, labels, T, alpha):
    return _distill_reference(s, t, labels, T, 1 - alpha)


def _distill_mean_over_vocab(s, t, labels, T, alpha):
    s, t, labels = _parts(s, t, labels, T)
    log_p, log_q = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
    soft = (log_p.exp() * (log_p - log_q)).mean()                      # averaged over positions AND tokens
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, labels)


def _distill_student_not_softened(s, t, labels, T, alpha):
    s, t, labels = _parts(s, t, labels, T)
    soft = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, labels)


def _distill_cross_entropy_soft(s, t, labels, T, alpha):
    """Soft cross-entropy instead of KL: the same gradient, a loss larger by the teacher's entropy."""
    s, t, labels = _parts(s, t, labels, T)
    soft = -(F.softmax(t / T, -1) * F.log_softmax(s / T, -1)).sum(-1).mean()
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, labels)


ORACLES = {
    KV_CACHE_BYTES.id: Oracle(
        reference=kv_reference,
        detectors=(
            Detector("all heads cached", _kv_all_heads,
                     "with grouped-query attention only num_key_value_heads heads are cached, not num_attention_heads"),
            Detector("K or V only", _kv_no_factor_2, "the cache holds K AND V: a factor 2"),
            Detector("hidden_size per position", _kv_hidden_size,
                     "a position stores num_key_value_heads * head_dim numbers per layer for K (and as many for V), "
                     "not hidden_size: grouped-query attention shares K/V heads"),
        ),
    ),
    DECODE_FLOPS_AND_BYTES.id: Oracle(
        reference=decode_reference,
        detectors=(
            Detector("no attention term", _decode_variant(attention=False, kv_bytes=False),
                     "attention over the cache costs too: 4 * L * h * d_h * seq_len FLOPs (q.k and weights.v), and "
                     "the K/V cache is read from memory every step"),
            Detector("no attention FLOPs", _decode_variant(attention=False),
                     "attention over the cache adds 4 * L * h * d_h * seq_len FLOPs: q.k then weights.v, "
                     "2 FLOPs per multiply-add each"),
            Detector("no K/V bytes", _decode_variant(kv_bytes=False),
                     "every step reads the whole K/V cache too: add kv_cache_bytes(config, 1, seq_len, dtype_bytes)"),
            Detector("one FLOP per multiply-add", _decode_variant(mac=True),
                     "a multiply-add is 2 FLOPs: a matmul with W (out x in) costs 2 * out * in per token"),
            Detector("no LM head", _decode_variant(lm_head=False),
                     "the LM head (hidden_size x vocab_size) is a matmul too, and a big one"),
            Detector("two MLP matrices", _decode_variant(mlp_matrices=2),
                     "Llama's MLP is SwiGLU: three matrices (gate_proj, up_proj, down_proj), not two"),
            Detector("K/V with all heads", _decode_variant(kv_heads_all=True),
                     "k_proj and v_proj have num_key_value_heads * head_dim outputs, and the cache that many per position"),
        ),
    ),
    QUANTIZE_INT8.id: Oracle(
        reference=_int8_outputs(_int8_reference),
        detectors=(
            Detector("truncation", _int8_outputs(_int8_with(rounding=torch.trunc)),
                     "round to the nearest integer (torch.round), do not truncate (.to(torch.int8) cuts towards 0)"),
            Detector("divides by 128", _int8_outputs(_int8_with(levels=128)),
                     "the scale maps max|w| to 127: scale = max|w| / 127 (symmetric int8 leaves -128 unused)"),
            Detector("max, not absmax", _int8_outputs(_int8_with(signed_max=True)),
                     "use the largest ABSOLUTE value (w.abs().amax(...)): a large negative weight must fit too"),
            Detector("the other axis", _int8_outputs(_int8_other_axis),
                     "one scale per index of `dim`: reduce the max over every OTHER axis (keepdim=True)"),
            Detector("zero channel", _int8_outputs(_int8_no_zero_guard),
                     "an all-zero group has max|w| = 0: give it scale 1 instead of dividing by zero"),
        ),
    ),
    DEQUANTIZE.id: Oracle(reference=dequantize_reference),
    QUANTIZE_INT4.id: Oracle(
        reference=_int4_outputs(_int4_reference),
        detectors=(
            Detector("high nibble first", _int4_outputs(_int4_swapped_nibbles),
                     "the EVEN column goes in the low nibble: packed = q[:, 0::2] | (q[:, 1::2] << 4)"),
            Detector("not packed", _int4_outputs(_int4_unpacked),
                     "pack two 4-bit values per byte: the result has in_features // 2 columns"),
            Detector("symmetric", _int4_outputs(_int4_symmetric),
                     "this scheme is asymmetric: minimum = min(w), scale = (max - min) / 15, q = round((w - minimum) / scale)"),
            Detector("one group per row", _int4_outputs(_int4_per_row),
                     "each group of group_size consecutive inputs has its own scale and minimum"),
            Detector("16 levels as a divisor", _int4_outputs(_int4_scale_16),
                     "4 bits give 16 levels 0..15, so 15 steps between min and max: scale = (max - min) / 15"),
        ),
    ),
    DEQUANTIZE_INT4.id: Oracle(
        reference=dequantize_int4_reference,
        detectors=(
            Detector("high nibble first", _dequantize_int4_high_first,
                     "the low nibble (packed & 15) is the EVEN column, the high nibble (packed >> 4) the odd one"),
            Detector("minimum left out", _dequantize_int4_no_minimum,
                     "add each group's minimum back: w = q * scale + minimum"),
        ),
    ),
    QUANT_LINEAR.id: Oracle(
        reference=_quant_linear_outputs(_dequantized),
        detectors=(
            Detector("float weight", _quant_linear_outputs(lambda w, bits, g: w, compressed=False),
                     "keep only the quantized weight (and its scales): compute forward from the dequantized weight, "
                     "and do not store the float one"),
            Detector("integers as weights", _quant_linear_outputs(_integers_as_weights),
                     "dequantize before the matmul: the integers must be multiplied by their scales (and shifted by "
                     "the minimum for 4 bits)"),
            Detector("per-tensor int8", _quant_linear_outputs(_per_tensor_int8),
                     "8 bits use one scale per OUTPUT channel: quantize_absmax_int8(weight, dim=0)"),
        ),
    ),
    DISTILLATION_LOSS.id: Oracle(
        reference=_distill_outputs(_distill_reference),
        detectors=(
            Detector("no T squared", _distill_outputs(_distill_no_t2),
                     "multiply the soft term by T**2: softening divides its gradients by T**2 (Hinton et al., 2015)"),
            Detector("reverse KL", _distill_outputs(_distill_reverse_kl),
                     "KL(teacher || student): F.kl_div(student_log_probs, teacher_log_probs, log_target=True)"),
            Detector("alpha swapped", _distill_outputs(_distill_alpha_swapped),
                     "alpha weighs the SOFT (teacher) term, 1 - alpha the hard-label cross-entropy"),
            Detector("mean over the vocabulary", _distill_outputs(_distill_mean_over_vocab),
                     "sum the KL over the vocabulary and average over positions (reduction='batchmean' on (N, V))"),
            Detector("student not softened", _distill_outputs(_distill_student_not_softened),
                     "divide the student's logits by T as well as the teacher's"),
            Detector("teacher not detached", _teacher_gets_gradient,
                     "the teacher is not trained: use teacher_logits.detach() so that no gradient flows into it"),
            Detector("soft cross-entropy", _distill_outputs(_distill_cross_entropy_soft),
                     "use the KL divergence, not the soft cross-entropy: they differ by the teacher's entropy"),
        ),
    ),
}
