"""The reference solutions of notebook 02: GPT-2's architecture in plain PyTorch, loadable with GPT-2 weights.

Later notebooks import the GPT from here (the d2l pattern), so they never depend on a learner
having finished notebook 02. While notebook 02 is graded, the sandbox leaves this module out (it
holds the answers); what every notebook may use is in ``utils.models``. The module names are the ones notebook 02 asks learners to use, so
:func:`load_gpt2_weights` fills a learner's ``GPT`` as well as this one:

    this module              Hugging Face GPT2LMHeadModel         shape here
    wte, wpe                 transformer.wte, transformer.wpe     (V, d), (n_positions, d)
    blocks[i].ln_1, ln_2     transformer.h.i.ln_1, ln_2           (d,)
    blocks[i].attn.q/k/v_proj  transformer.h.i.attn.c_attn        3 x Linear(d, d) from one (d, 3d)
    blocks[i].attn.out_proj  transformer.h.i.attn.c_proj          Linear(d, d)
    blocks[i].mlp.fc, proj   transformer.h.i.mlp.c_fc, c_proj     Linear(d, 4d), Linear(4d, d)
    ln_f, lm_head            transformer.ln_f, lm_head            (d,), tied to wte

GPT-2 stores its linear layers as ``Conv1D`` with weight ``(in, out)``: they are transposed into
``nn.Linear``'s ``(out, in)``.

>>> import torch
>>> model = GPT(vocab_size=50, n_positions=16, d_model=32, n_layers=2, n_heads=4)
>>> model(torch.zeros(2, 5, dtype=torch.long)).shape
torch.Size([2, 5, 50])
>>> model.lm_head.weight is model.wte.weight
True
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import CausalSelfAttention, LanguageModel


class LayerNorm(nn.Module):
    """Normalise the last axis to mean 0, variance 1 (biased), then scale and shift: (..., d) -> (..., d).

    ``forward`` calls PyTorch's fused kernel (one pass over memory, ~1.5x faster training of the
    small models of notebook 04); ``forward_manual`` is the same formula written out, as in notebook 02.
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def forward_manual(self, x):
        mean = x.mean(-1, keepdim=True)                                 # (..., 1)
        var = x.var(-1, keepdim=True, unbiased=False)                   # (..., 1)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def gelu_tanh(x):
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); ``FeedForward`` uses the fused
    ``F.gelu(x, approximate="tanh")``, which computes the same."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(d, d_ff) -> GELU (tanh) -> Linear(d_ff, d), the same at every position."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))      # = gelu_tanh, fused


class TransformerBlock(nn.Module):
    """GPT-2's pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). (B, T, d) -> (B, T, d)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None):
        super().__init__()
        self.ln_1 = LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln_2 = LayerNorm(d_model)
        self.mlp = FeedForward(d_model, d_ff or 4 * d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


def sinusoidal_positions(T: int, d: int) -> torch.Tensor:
    """Vaswani et al.'s fixed position encodings, (T, d): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    position = torch.arange(T, dtype=torch.float32)[:, None]               # (T, 1)
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)  # (ceil(d/2),)
    angles = position * frequency                                          # (T, ceil(d/2))
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : d // 2])
    return pe


class GPT(LanguageModel):
    """GPT-2: token + learned position embeddings, n_layers pre-norm blocks, final LayerNorm, tied LM head.

    forward(ids (B, T) long) -> logits (B, T, vocab_size).
    """

    def __init__(self, vocab_size: int, n_positions: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__(vocab_size, n_positions, d_model, n_layers, n_heads)
        self.wpe = nn.Embedding(n_positions, d_model)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self.gpt2_init)

    @classmethod
    def from_config(cls, config) -> "GPT":
        """The same shape as a ``transformers.GPT2Config``."""
        return cls(config.vocab_size, config.n_positions, config.n_embd, config.n_layer, config.n_head)

    def forward(self, ids):
        B, T = ids.shape
        if T > self.n_positions:
            raise ValueError(f"sequence of {T} tokens, but the model has only {self.n_positions} positions")
        positions = torch.arange(T, device=ids.device)                  # (T,)
        x = self.wte(ids) + self.wpe(positions)                         # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))                               # (B, T, V)


def load_gpt2_weights(model: nn.Module, hf_state_dict: dict) -> nn.Module:
    """Copy a ``GPT2LMHeadModel`` state dict into ``model`` (this module's names); returns ``model``.

    Conv1D weights ``(in, out)`` are transposed to ``nn.Linear``'s ``(out, in)``; GPT-2's fused
    ``c_attn`` (d, 3d) is split into q, k and v.
    """
    sd = {key.removeprefix("transformer."): torch.as_tensor(value) for key, value in hf_state_dict.items()}
    n_layers = len(model.blocks)
    d = model.wte.weight.shape[1]

    def put(param, value):
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(f"shape {tuple(value.shape)} does not fit a parameter of shape {tuple(param.shape)}")
        param.copy_(value)

    with torch.no_grad():
        put(model.wte.weight, sd["wte.weight"])
        put(model.wpe.weight, sd["wpe.weight"])
        for i, block in enumerate(model.blocks):
            p = f"h.{i}."
            for ln in ("ln_1", "ln_2"):
                put(getattr(block, ln).weight, sd[p + ln + ".weight"])
                put(getattr(block, ln).bias, sd[p + ln + ".bias"])
            w_q, w_k, w_v = sd[p + "attn.c_attn.weight"].split(d, dim=1)  # (d, 3d) -> 3 x (d, d)
            b_q, b_k, b_v = sd[p + "attn.c_attn.bias"].split(d)
            for name, w, b in (("q_proj", w_q, b_q), ("k_proj", w_k, b_k), ("v_proj", w_v, b_v),
                               ("out_proj", sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"])):
                put(getattr(block.attn, name).weight, w.t())
                put(getattr(block.attn, name).bias, b)
            for name, hf in (("fc", "c_fc"), ("proj", "c_proj")):
                put(getattr(block.mlp, name).weight, sd[p + f"mlp.{hf}.weight"].t())
                put(getattr(block.mlp, name).bias, sd[p + f"mlp.{hf}.bias"])
        if f"h.{n_layers}.ln_1.weight" in sd:
            raise ValueError(f"the state dict has more than {n_layers} layers")
        put(model.ln_f.weight, sd["ln_f.weight"])
        put(model.ln_f.bias, sd["ln_f.bias"])
        put(model.lm_head.weight, sd.get("lm_head.weight", sd["wte.weight"]))
    return model


