"""The reference solutions of notebook 09 (hidden while it is graded): the memory and compute of a
decode step, int8 and int4 weight quantization, a quantized linear layer and the distillation loss.

Later code (``benchmarks/quantize.py``) imports them from here; the notebook itself never does
unguarded, so a learner's own versions are what it runs.

Shapes follow Hugging Face's Llama config names: ``hidden_size`` d, ``intermediate_size`` d_ff,
``num_hidden_layers`` L, ``num_attention_heads`` h, ``num_key_value_heads`` h_kv, ``head_dim`` d_h,
``vocab_size`` V.

>>> import types
>>> smollm2 = types.SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
...     num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152)
>>> kv_cache_bytes(smollm2, batch=1, seq_len=8192, dtype_bytes=2)     # 180 MiB at SmolLM2's full context
188743680
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def head_dim(config) -> int:
    """``config.head_dim``, or ``hidden_size // num_attention_heads`` when the config has none."""
    value = getattr(config, "head_dim", None)
    return int(value) if value else int(config.hidden_size) // int(config.num_attention_heads)


def kv_cache_bytes(config, batch: int, seq_len: int, dtype_bytes: int = 2) -> int:
    """Bytes of the key/value cache: K and V, for every layer, sequence, position and KV head.

    2 * L * batch * seq_len * h_kv * d_h * dtype_bytes (grouped-query attention stores h_kv heads, not h).
    """
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return 2 * int(config.num_hidden_layers) * batch * seq_len * kv_heads * head_dim(config) * dtype_bytes


def matmul_weights(config) -> int:
    """Weights a token multiplies through: q, k, v, o and the SwiGLU MLP's three matrices in every
    layer, plus the LM head (d x V). Norms and the embedding lookup (one row) are left out."""
    d, ff, L = int(config.hidden_size), int(config.intermediate_size), int(config.num_hidden_layers)
    h = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or h)
    dh = head_dim(config)
    per_layer = d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * ff
    return L * per_layer + d * int(config.vocab_size)


def decode_flops_and_bytes(config, seq_len: int, dtype_bytes: int = 4) -> tuple[int, int]:
    """FLOPs and bytes read from memory by ONE decode step of batch 1, the cache holding ``seq_len``
    positions (the new token's included).

    FLOPs: 2 per multiply-add of every matmul weight (:func:`matmul_weights`), plus attention's
    q.k and weights.v over seq_len positions: 4 * L * h * d_h * seq_len.
    Bytes: every matmul weight once, plus the K and V cache of the sequence, at ``dtype_bytes`` each.
    """
    L, h = int(config.num_hidden_layers), int(config.num_attention_heads)
    weights = matmul_weights(config)
    flops = 2 * weights + 4 * L * h * head_dim(config) * seq_len
    return flops, weights * dtype_bytes + kv_cache_bytes(config, 1, seq_len, dtype_bytes)


# --------------------------------------------------------------------------- int8, absmax


def quantize_absmax_int8(w: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8: ``scale = max|w| / 127``, ``q = round(w / scale)`` in [-127, 127].

    ``dim=None``: one scale for the whole tensor (shape ``()``); ``dim=k``: one scale per index of
    axis k (per output channel of an nn.Linear weight (out, in) is ``dim=0``), kept as a
    broadcastable shape (size 1 on every other axis). An all-zero group gets scale 1.

    >>> q, s = quantize_absmax_int8(torch.tensor([[0.5, -1.0], [2.0, 0.1]]), dim=0)
    >>> q, s.flatten()
    (tensor([[  64, -127],
            [ 127,    6]], dtype=torch.int8), tensor([0.0079, 0.0157]))
    """
    w = w.float()
    if dim is None:
        amax = w.abs().amax()
    else:
        dim = dim % w.dim()
        others = tuple(i for i in range(w.dim()) if i != dim)
        amax = w.abs().amax(dim=others, keepdim=True) if others else w.abs()
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 back to float32: ``q * scale``."""
    return q.float() * scale


# --------------------------------------------------------------------------- int4, group-wise, packed


def quantize_int4_groupwise(w: torch.Tensor, group_size: int = 128):
    """Asymmetric 4-bit quantization of a 2-D weight (out, in) in groups of ``group_size`` along ``in``.

    Per group: ``minimum = min(w)``, ``scale = (max(w) - min(w)) / 15`` (1 where the group is
    constant), ``q = round((w - minimum) / scale)`` in [0, 15]. Two 4-bit values share a byte:
    ``packed[:, j] = q[:, 2j] | (q[:, 2j + 1] << 4)`` (even column in the low nibble).

    Returns ``(packed uint8 (out, in // 2), scale float32 (out, in // g), minimum float32 (out, in // g))``.
    """
    out_features, in_features = w.shape
    if in_features % group_size or group_size % 2:
        raise ValueError(f"in_features ({in_features}) must be a multiple of an even group_size ({group_size})")
    groups = w.float().reshape(out_features, in_features // group_size, group_size)   # (out, n_groups, g)
    low, high = groups.amin(-1), groups.amax(-1)                                         # (out, n_groups)
    scale = torch.where(high > low, (high - low) / 15, torch.ones_like(low))
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.reshape(out_features, in_features)                                             # (out, in)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)                                              # (out, in/2)
    return packed, scale, low


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(out, in/2) uint8 -> (out, in) uint8 in [0, 15]: low nibble first."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)                # (out, in)


def dequantize_int4_groupwise(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
                              group_size: int = 128) -> torch.Tensor:
    """Inverse of :func:`quantize_int4_groupwise`: ``q * scale + minimum`` per group, float32 (out, in)."""
    q = unpack_int4(packed).float()
    out_features, in_features = q.shape
    groups = q.reshape(out_features, in_features // group_size, group_size)             # (out, n_groups, g)
    return (groups * scale[..., None] + minimum[..., None]).reshape(out_features, in_features)


class QuantLinear(nn.Module):
    """An ``nn.Linear`` whose weight is stored quantized and dequantized on the fly in ``forward``.

    ``bits=8``: per-output-channel absmax int8 (buffers ``qweight`` int8 (out, in), ``scale`` (out, 1)).
    ``bits=4``: group-wise asymmetric int4, packed (buffers ``qweight`` uint8 (out, in/2), ``scale``
    and ``minimum`` (out, in/g)). The bias, if any, stays in float32.
    """

    def __init__(self, linear: nn.Linear, bits: int = 8, group_size: int = 128):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, not {bits}")
        self.bits, self.group_size = bits, group_size
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if bits == 8:
            qweight, scale = quantize_absmax_int8(weight, dim=0)
            self.register_buffer("qweight", qweight)
            self.register_buffer("scale", scale)
        else:
            qweight, scale, minimum = quantize_int4_groupwise(weight, group_size)
            self.register_buffer("qweight", qweight)
            self.register_buffer("scale", scale)
            self.register_buffer("minimum", minimum)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())

    def weight_hat(self) -> torch.Tensor:
        if self.bits == 8:
            return dequantize(self.qweight, self.scale)
        return dequantize_int4_groupwise(self.qweight, self.scale, self.minimum, self.group_size)

    def forward(self, x):
        return F.linear(x, self.weight_hat().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bits={self.bits}" + (
            f", group_size={self.group_size}" if self.bits == 4 else "")


# --------------------------------------------------------------------------- distillation


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      T: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton et al. (2015): ``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels)``.

    Logits (..., V), labels (...); both terms are means over positions. p^T = softmax(logits / T).
    The T^2 keeps the soft term's gradients the same size whatever the temperature.
    """
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)                                   # (N, V)
    t = teacher_logits.detach().reshape(-1, V)                          # (N, V)
    soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    hard = F.cross_entropy(s, labels.reshape(-1))
    return alpha * T * T * soft + (1 - alpha) * hard
