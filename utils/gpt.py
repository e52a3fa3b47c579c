"""The reference GPT of notebook 02: GPT-2's architecture in plain PyTorch, loadable with GPT-2 weights.

Later notebooks import it from here (the d2l pattern), so they never depend on a learner having
finished notebook 02. The module names are the ones notebook 02 asks learners to use, so
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

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class CausalSelfAttention(nn.Module):
    """Notebook 01's MultiHeadAttention with the causal mask built in: (B, T, d) -> (B, T, d).

    Same parameters (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``), computed with PyTorch's
    fused ``F.scaled_dot_product_attention`` (no weights materialised). An extra boolean ``mask``
    (True = may attend, broadcastable to (B, h, T, T)) is combined with the causal one.
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

        def split(z):                                                   # (B, T, d)
            return z.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, T, d_head)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal & mask)
        out = out.transpose(1, 2).reshape(B, T, d_model)                # (B, T, d): heads concatenated
        return self.out_proj(out)


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


class LanguageModel(nn.Module):
    """What every model of the course that maps ids (B, T) to logits (B, T, V) can do besides ``forward``:
    save and load checkpoints, and sample text. It keeps the constructor's arguments as ``config``
    and owns the token embedding ``wte`` (V, d)."""

    def __init__(self, vocab_size: int, n_positions: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.n_positions = n_positions
        self.config = {"vocab_size": vocab_size, "n_positions": n_positions, "d_model": d_model,
                       "n_layers": n_layers, "n_heads": n_heads}
        self.wte = nn.Embedding(vocab_size, d_model)

    # ---- checkpoints in the layout of the Hugging Face hub: a folder with config.json + model.safetensors

    def save_pretrained(self, folder) -> Path:
        """Write ``config.json`` (the constructor's arguments) and ``model.safetensors`` into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"architecture": type(self).__name__, **self.config}, indent=2))
        save_model(self, str(folder / "model.safetensors"))  # stores the tied wte/lm_head matrix once
        return folder

    @classmethod
    def from_pretrained(cls, folder) -> "LanguageModel":
        """Rebuild a model saved with :meth:`save_pretrained`: the config gives its shape, the file its weights.

        >>> import tempfile
        >>> model = GPT(vocab_size=11, n_positions=8, d_model=16, n_layers=1, n_heads=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     copy = GPT.from_pretrained(model.save_pretrained(folder))
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> torch.equal(model(ids), copy(ids))
        True
        """
        from safetensors.torch import load_model

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        architecture = config.pop("architecture", None)
        if architecture != cls.__name__:
            raise ValueError(f"{folder} holds a {architecture} checkpoint, not a {cls.__name__} checkpoint")
        model = cls(**config)
        load_model(model, str(folder / "model.safetensors"))
        return model.eval()

    @torch.no_grad()
    def generate(self, ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        """Sample ``max_new_tokens`` tokens after ``ids`` (B, T): (B, T) -> (B, T + max_new_tokens).

        Each step feeds the last ``n_positions`` tokens (the context window), divides the last
        logits by ``temperature``, keeps the ``top_k`` best and samples (notebook 05 explains why).
        """
        for _ in range(max_new_tokens):
            logits = self(ids[:, -self.n_positions:])[:, -1, :] / temperature   # (B, V)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)  # (B, 1)
            ids = torch.cat([ids, next_id], dim=1)
        return ids


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
        self.apply(self._init)

    @staticmethod
    def _init(module):  # GPT-2's initialisation: N(0, 0.02), zero biases
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

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


def gpt2_config(vocab_size: int = 256, n_positions: int = 64, d_model: int = 64, n_layers: int = 2,
                n_heads: int = 4):
    """A small ``transformers.GPT2Config`` (no download), GPT-2's architecture at a size of our choosing."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=d_model, n_layer=n_layers,
                      n_head=n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)


# ----------------------------------------------------------------------------- after GPT-2
#
# Four changes that models since GPT-2 (Llama, SmolLM2, the nanoGPT "speedrun") made to the block,
# each small, which together train a small model noticeably faster (notebook 04, make bench):
#   rotary positions   relative positions by rotating q and k (Su et al., RoFormer, 2021), no wpe table
#   QK-norm            q and k normalised per head, so attention logits stay bounded at high learning rates
#   ReLU^2             max(0, x)^2 in the MLP (So et al., Primer, 2021): cheaper than GELU and better here
#   zero-init outputs  each block starts as the identity (out_proj and mlp.proj are 0), so depth costs nothing early


def rotary_tables(T: int, d_head: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles p * base^(-2i/d_head), each (T, d_head // 2).

    >>> cos, sin = rotary_tables(4, 8)
    >>> cos.shape, float(cos[0, 0]), float(sin[1, 0])   # position 0 is not rotated; position 1 turns by 1 rad
    (torch.Size([4, 4]), 1.0, 0.8414709568023682)
    """
    frequency = base ** (-torch.arange(0, d_head // 2, dtype=torch.float32) / (d_head // 2))   # (d_head/2,)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * frequency                        # (T, d_head/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of features (x_i, x_{i + d/2}) by the angles of each position: (..., T, d) -> (..., T, d).

    The dot product of a rotated query at position m and a rotated key at position n depends only
    on m - n: attention sees relative positions.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]                                  # (..., T, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RotarySelfAttention(nn.Module):
    """Self-attention with one fused q/k/v projection, QK-norm and rotary positions: (B, T, d) -> (B, T, d).

    Causal by default; ``causal=False`` lets every token see the whole sequence, as in BERT.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = True):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.d_head, self.causal = n_heads, d_model // n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, cos, sin):
        B, T, d_model = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head)            # (B, T, 3, h, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                   # 3 x (B, h, T, d_head)
        q, k = F.rms_norm(q, (self.d_head,)), F.rms_norm(k, (self.d_head,))    # QK-norm
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)   # (B, h, T, d_head)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, d_model))       # (B, T, d)


class ModernBlock(nn.Module):
    """Pre-norm block like GPT-2's, with rotary/QK-norm attention and a ReLU^2 MLP. (B, T, d) -> (B, T, d)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = True):
        super().__init__()
        self.ln_1 = LayerNorm(d_model)
        self.attn = RotarySelfAttention(d_model, n_heads, causal)
        self.ln_2 = LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.proj(F.relu(self.fc(self.ln_2(x))).square())


class ModernGPT(LanguageModel):
    """GPT-2 with the four changes above; same interface as :class:`GPT`: ids (B, T) -> logits (B, T, V).

    ``causal=False`` removes the causal mask and nothing else: the model becomes a BERT-style
    encoder, which notebook 04 trains on masked tokens.

    >>> model = ModernGPT(vocab_size=50, n_positions=16, d_model=32, n_layers=2, n_heads=4)
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 5, 50])
    """

    def __init__(self, vocab_size: int, n_positions: int, d_model: int, n_layers: int, n_heads: int,
                 causal: bool = True):
        super().__init__(vocab_size, n_positions, d_model, n_layers, n_heads)
        self.config["causal"] = causal
        self.blocks = nn.ModuleList(ModernBlock(d_model, n_heads, causal) for _ in range(n_layers))
        self.ln_f = LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(GPT._init)
        for block in self.blocks:                      # every block starts as the identity
            nn.init.zeros_(block.attn.out_proj.weight)
            nn.init.zeros_(block.proj.weight)
        cos, sin = rotary_tables(n_positions, d_model // n_heads)
        self.register_buffer("cos", cos, persistent=False)                     # (n_positions, d_head/2)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids):
        B, T = ids.shape
        if T > self.n_positions:
            raise ValueError(f"sequence of {T} tokens, but the model has only {self.n_positions} positions")
        x = self.wte(ids)                                                      # (B, T, d): no position table
        for block in self.blocks:
            x = block(x, self.cos[:T], self.sin[:T])
        return self.lm_head(self.ln_f(x))                                      # (B, T, V)
