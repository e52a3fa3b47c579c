"""The reference solutions of notebook 05 (the model half): Llama in plain PyTorch, with a KV cache.

SmolLM2-135M-Instruct is a Llama (Touvron et al., 2023): GPT-2's pre-norm decoder with four changes,
each one function or class here:

    RMSNorm            rms_norm          x / sqrt(mean(x^2) + eps) * weight: no mean, no bias (Zhang & Sennrich, 2019)
    rotary positions   apply_rope        q and k rotated by position-dependent angles, theta = 1e5 (Su et al., 2021)
    grouped-query attn repeat_kv         9 query heads share 3 key/value heads (Ainslie et al., 2023)
    SwiGLU MLP         MLP               down(silu(gate(x)) * up(x)) (Shazeer, 2020)

The parameter names are those of ``transformers``' ``LlamaForCausalLM`` without the leading
``model.``, so its safetensors load as they are (``Llama.from_pretrained``); the logits agree with
``LlamaForCausalLM`` to ~1e-5 (tests/test_generation.py).

``Llama.forward(input_ids, cache=None)`` is the course's **model interface** for decoding: ids
(B, T) -> logits (B, T, V). With a cache the ids are the *new* tokens: their positions start at
``cache.get_seq_length()``, each layer appends its keys and values with ``cache.update`` and
attends over everything cached. :class:`KVCache` has the methods of ``transformers``'
``DynamicCache`` that this needs (``update``, ``get_seq_length``, ``crop``), so either fits.

While notebook 05 is graded the sandbox leaves this module out (it holds the answers).

>>> import torch
>>> model = Llama(LlamaShape(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
>>> ids = torch.randint(0, 64, (1, 7))
>>> full = model(ids)                                       # (1, 7, 64)
>>> cache = model.new_cache()
>>> step = torch.cat([model(ids[:, :5], cache=cache), model(ids[:, 5:6], cache=cache), model(ids[:, 6:], cache=cache)], 1)
>>> cache.get_seq_length(), bool(torch.allclose(full, step, atol=1e-5))
(7, True)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------- the three new pieces


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Root-mean-square norm over the last axis, then a learned scale: (..., d) -> (..., d).

    Unlike LayerNorm there is no mean subtracted and no bias. Computed in float32, as Llama does.

    >>> rms_norm(torch.tensor([[3.0, 4.0]]), torch.ones(2), eps=0.0)   # rms = sqrt((9 + 16) / 2)
    tensor([[0.8485, 1.1314]])
    """
    x32 = x.float()
    variance = x32.pow(2).mean(-1, keepdim=True)                           # (..., 1)
    return weight * (x32 * torch.rsqrt(variance + eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1), halves of the last axis: the 90-degree turn of each pair (x_i, x_{i+d/2})."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope_angles(positions: torch.Tensor, d_head: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles p * theta^(-2i/d_head), repeated for both halves: (..., T) -> (..., T, d_head)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head))    # (d_head/2,)
    angles = positions[..., None].float() * inv_freq                                          # (..., T, d_head/2)
    emb = torch.cat([angles, angles], dim=-1)                                                 # (..., T, d_head)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of queries or keys: x (B, H, T, d_head), positions (T,) or (B, T) -> (B, H, T, d_head).

    Pairs (x_i, x_{i + d/2}) turn by the angle p * theta^(-2i/d), so the dot product of a query at
    position m and a key at n depends only on m - n.

    >>> x = torch.tensor([[[[1.0, 0.0]]]])                       # (1, 1, 1, 2): one pair, at position 1
    >>> apply_rope(x, torch.tensor([1]), theta=10000.0)          # turned by 1 radian
    tensor([[[[0.5403, 0.8415]]]])
    """
    return rotate(x, *rope_angles(positions, x.shape[-1], theta))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` with the angles' cos and sin (T, d) or (B, T, d) computed once (every layer shares them)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]                    # (B, 1, T, d): the same for every head
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Grouped-query attention's sharing: (B, H_kv, T, d) -> (B, H_kv * n_rep, T, d), each head repeated
    ``n_rep`` times in place (kv head j serves query heads j * n_rep ... (j + 1) * n_rep - 1).

    >>> repeat_kv(torch.tensor([10.0, 20.0]).view(1, 2, 1, 1), 2).flatten()
    tensor([10., 10., 20., 20.])
    """
    B, H_kv, T, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None].expand(B, H_kv, n_rep, T, d).reshape(B, H_kv * n_rep, T, d)


class KVCache:
    """The keys and values of every layer so far, for decoding one token at a time.

    ``update(key_states, value_states, layer_idx)`` appends the new (B, H_kv, T_new, d) keys and
    values of layer ``layer_idx`` along the time axis and returns all of that layer's
    (B, H_kv, T_cached, d); ``get_seq_length(layer_idx=0)`` is the number of cached positions;
    ``crop(length)`` forgets everything after the first ``length`` positions (speculative decoding
    rolls back rejected tokens with it). The methods of ``transformers.DynamicCache``, which however
    spells ``crop`` differently since transformers 5 (``crop(-n)`` removes the last n positions).

    >>> cache = KVCache()
    >>> k, v = cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)   # the prompt
    >>> k, v = cache.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)     # one new token
    >>> tuple(k.shape), cache.get_seq_length()
    ((1, 2, 6, 4), 6)
    """

    def __init__(self):
        self.keys: list[torch.Tensor] = []        # one (B, H_kv, T, d) tensor per layer
        self.values: list[torch.Tensor] = []

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx == len(self.keys):           # the first tokens this layer sees
            self.keys.append(key_states)
            self.values.append(value_states)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)       # (B, H_kv, T+T_new, d)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0

    def crop(self, max_length: int) -> None:
        for i in range(len(self.keys)):
            self.keys[i] = self.keys[i][..., :max_length, :]
            self.values[i] = self.values[i][..., :max_length, :]


# --------------------------------------------------------------------------- the model


@dataclass
class LlamaShape:
    """The few numbers that fix a Llama's shape (SmolLM2-135M: 49152, 576, 30, 9, 3, 1536, theta 1e5)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    head_dim: int | None = None

    @classmethod
    def from_config(cls, config) -> "LlamaShape":
        """From a ``transformers.LlamaConfig`` (or its ``config.json`` as a dict)."""
        get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
        rope = get("rope_parameters") or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        return cls(get("vocab_size"), get("hidden_size"), get("num_hidden_layers"), get("num_attention_heads"),
                   get("num_key_value_heads"), get("intermediate_size"), float(theta or get("rope_theta", 10000.0)),
                   float(get("rms_norm_eps", 1e-5)), get("head_dim"))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotary positions and an optional KV cache."""

    def __init__(self, shape: LlamaShape, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads = shape.n_heads, shape.n_kv_heads
        self.head_dim = shape.head_dim or shape.d_model // shape.n_heads
        self.theta = shape.rope_theta
        self.q_proj = nn.Linear(shape.d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(shape.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(shape.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, shape.d_model, bias=False)

    def forward(self, x, rope, cache=None):
        """x (B, T, d_model); rope: the (cos, sin) of the positions of x, each (T, d_head)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, d_head)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d_head)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d_head)
        q, k = rotate(q, *rope), rotate(k, *rope)                                      # apply_rope, angles shared
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)                                  # (B, H_kv, S, d_head)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)                                # (B, H, S, d_head)
        S = k.shape[2]
        if T == 1:            # one new token sees everything cached: no mask
            out = F.scaled_dot_product_attention(q, k, v)
        elif S == T:          # no cache: the usual causal mask
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:                 # T new tokens after S - T cached ones: token i sees keys 0 ... S - T + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)   # (T, S)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)          # (B, T, H * d_head)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.gate_proj = nn.Linear(shape.d_model, shape.d_ff, bias=False)
        self.up_proj = nn.Linear(shape.d_model, shape.d_ff, bias=False)
        self.down_proj = nn.Linear(shape.d_ff, shape.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)), with RMSNorm."""

    def __init__(self, shape: LlamaShape, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(shape.d_model, shape.rms_norm_eps)
        self.self_attn = Attention(shape, layer_idx)
        self.post_attention_layernorm = RMSNorm(shape.d_model, shape.rms_norm_eps)
        self.mlp = MLP(shape)

    def forward(self, x, rope, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """A Llama decoder with tied embeddings: ``forward(input_ids (B, T), cache=None) -> logits (B, T, V)``.

    ``n_layers`` in ``forward`` runs only the first layers (then the final norm and the head): an
    *early-exit* draft model that shares every weight, for speculative decoding.
    """

    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.d_model)
        self.layers = nn.ModuleList(DecoderLayer(shape, i) for i in range(shape.n_layers))
        self.norm = RMSNorm(shape.d_model, shape.rms_norm_eps)
        self.lm_head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight       # tied, as in SmolLM2

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, input_ids, cache=None, n_layers: int | None = None):
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(past, past + T, device=input_ids.device)                # (T,)
        head_dim = self.shape.head_dim or self.shape.d_model // self.shape.n_heads
        rope = rope_angles(positions, head_dim, self.shape.rope_theta)                     # cos, sin (T, d_head)
        x = self.embed_tokens(input_ids)                                                   # (B, T, d)
        for layer in self.layers[:n_layers]:
            x = layer(x, rope, cache)
        return self.lm_head(self.norm(x))                                                  # (B, T, V)

    @classmethod
    def from_pretrained(cls, folder) -> "Llama":
        """Load a ``LlamaForCausalLM`` checkpoint (``config.json`` + ``model.safetensors``) from ``folder``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        shape = LlamaShape.from_config(json.loads((folder / "config.json").read_text()))
        model = cls(shape)
        state = {key.removeprefix("model."): value for key, value in load_file(folder / "model.safetensors").items()}
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
        model.load_state_dict(state, strict=True)
        return model.eval()


class EarlyExit(nn.Module):
    """The first ``n_layers`` of a :class:`Llama` as a model of its own (shared weights): a cheap draft."""

    def __init__(self, model: Llama, n_layers: int):
        super().__init__()
        self.model, self.n_layers = model, n_layers

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, input_ids, cache=None):
        return self.model(input_ids, cache=cache, n_layers=self.n_layers)


def load_smollm2() -> Llama:
    """SmolLM2-135M-Instruct (``utils.assets``) in this module's Llama."""
    from .assets import smollm2_dir

    return Llama.from_pretrained(smollm2_dir())
