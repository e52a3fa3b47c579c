"""Models that every notebook may use: GPT-2's attention, the base class of the course's language
models, and GPT-2 modernised (``ModernGPT``).

Nothing here is the answer to an exercise, so no notebook's grading leaves this module out (the
GPT that notebook 02 asks learners to build is in ``utils.gpt``, which its grading hides).

>>> import torch
>>> model = ModernGPT(vocab_size=50, n_positions=16, d_model=32, n_layers=2, n_heads=4)
>>> model(torch.zeros(2, 5, dtype=torch.long)).shape
torch.Size([2, 5, 50])
>>> model.lm_head.weight is model.wte.weight
True
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


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

    @staticmethod
    def gpt2_init(module):
        """GPT-2's initialisation, for ``model.apply``: weights N(0, 0.02), zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

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
        >>> model = ModernGPT(vocab_size=11, n_positions=8, d_model=16, n_layers=1, n_heads=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     copy = ModernGPT.from_pretrained(model.save_pretrained(folder))
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
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = RotarySelfAttention(d_model, n_heads, causal)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.proj(F.relu(self.fc(self.ln_2(x))).square())


class ModernGPT(LanguageModel):
    """GPT-2 with the four changes above; same interface as ``utils.gpt.GPT``: ids (B, T) -> logits (B, T, V).

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
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self.gpt2_init)
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
