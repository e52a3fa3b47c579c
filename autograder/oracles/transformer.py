"""Notebook 02, trusted side: references and known mistakes of the transformer exercises.

Oracles: ``torch.nn.LayerNorm``, ``F.gelu(approximate="tanh")``, the sinusoid formula written out in
NumPy, and ``transformers.GPT2LMHeadModel`` (built from a small ``GPT2Config``, random weights given
by the case) for the whole model. The block is compared with the course's reference,
``utils.gpt.TransformerBlock``, which the tests check against ``GPT2LMHeadModel``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..manifests.transformer import _BLOCK_NAMES, BLOCK, FEED_FORWARD, GPT_EXERCISE, LAYER_NORM, LOAD, SINUSOIDAL
from ..spec import Detector, Oracle
from .common import tensor as _t


def ln_reference(inputs):
    d = inputs["x"].shape[-1]
    ln = torch.nn.LayerNorm(d, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(_t(inputs, "weight"))
        ln.bias.copy_(_t(inputs, "bias"))
        return {"y": ln(_t(inputs, "x"))}


def _ln_variant(unbiased=False, eps_outside=False, whole=False):
    def produce(inputs):
        x, w, b = _t(inputs, "x"), _t(inputs, "weight"), _t(inputs, "bias")
        dims = tuple(range(x.dim())) if whole else (-1,)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=unbiased)
        scale = (var.sqrt() + 1e-5) if eps_outside else torch.sqrt(var + 1e-5)
        return {"y": (x - mean) / scale * w + b}

    return produce


def _ff(inputs, activation):
    hidden = _t(inputs, "x") @ _t(inputs, "fc_weight").T + _t(inputs, "fc_bias")   # (B, T, d_ff)
    return {"y": activation(hidden) @ _t(inputs, "proj_weight").T + _t(inputs, "proj_bias")}


def _angles(inputs):
    T, d = int(inputs["T"]), int(inputs["d"])
    i = np.arange(0, d, 2)
    return np.arange(T)[:, None] / np.power(10000.0, i / d)[None, :]      # (T, d/2)


def sin_reference(inputs):
    angles = _angles(inputs)
    pe = np.zeros((angles.shape[0], int(inputs["d"])), dtype=np.float32)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles)
    return {"pe": pe}


def _sin_variant(kind):
    def produce(inputs):
        angles = _angles(inputs)
        if kind == "halves":
            return {"pe": np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)}
        pe = np.zeros((angles.shape[0], int(inputs["d"])), dtype=np.float32)
        pe[:, 0::2], pe[:, 1::2] = np.cos(angles), np.sin(angles)
        return {"pe": pe}

    return produce


def _block(inputs, kind="pre-norm"):
    from utils.gpt import TransformerBlock

    x = _t(inputs, "x")
    block = TransformerBlock(x.shape[-1], int(inputs["n_heads"]))
    block.load_state_dict({name: _t(inputs, name) for name in _BLOCK_NAMES})
    block.eval()
    with torch.no_grad():
        attn, mlp, ln_1, ln_2 = block.attn, block.mlp, block.ln_1, block.ln_2
        if kind == "pre-norm":
            return {"y": block(x)}
        if kind == "post-norm":
            x = ln_1(x + attn(x))
            return {"y": ln_2(x + mlp(x))}
        if kind == "no residual":
            return {"y": mlp(ln_2(attn(ln_1(x))))}
        if kind == "not causal":
            d_head = x.shape[-1] // attn.n_heads

            def split(z):
                return z.view(*x.shape[:2], attn.n_heads, d_head).transpose(1, 2)

            h = ln_1(x)
            out = F.scaled_dot_product_attention(split(attn.q_proj(h)), split(attn.k_proj(h)), split(attn.v_proj(h)))
            x = x + attn.out_proj(out.transpose(1, 2).reshape(x.shape))
            return {"y": x + mlp(ln_2(x))}
        if kind == "one norm":
            x = x + attn(ln_1(x))
            return {"y": x + mlp(ln_1(x))}
    raise ValueError(kind)


def _hf_state_dict(inputs, zero_positions=False):
    """The case's course-named weights (``p.<name>``) as a GPT2LMHeadModel state dict: q, k, v fused into
    ``c_attn`` and every linear weight transposed to Conv1D's (in, out)."""
    p = {key[2:]: _t(inputs, key) for key in inputs if key.startswith("p.")}
    L = int(inputs["config"][3])
    sd = {"transformer.wte.weight": p["wte.weight"], "lm_head.weight": p["wte.weight"],
          "transformer.wpe.weight": torch.zeros_like(p["wpe.weight"]) if zero_positions else p["wpe.weight"],
          "transformer.ln_f.weight": p["ln_f.weight"], "transformer.ln_f.bias": p["ln_f.bias"]}
    for i in range(L):
        c, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[h + ln + ".weight"], sd[h + ln + ".bias"] = p[c + ln + ".weight"], p[c + ln + ".bias"]
        sd[h + "attn.c_attn.weight"] = torch.cat([p[c + f"attn.{n}_proj.weight"].T for n in "qkv"], dim=1)  # (d, 3d)
        sd[h + "attn.c_attn.bias"] = torch.cat([p[c + f"attn.{n}_proj.bias"] for n in "qkv"])
        sd[h + "attn.c_proj.weight"], sd[h + "attn.c_proj.bias"] = p[c + "attn.out_proj.weight"].T, p[c + "attn.out_proj.bias"]
        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"] = p[c + "mlp.fc.weight"].T, p[c + "mlp.fc.bias"]
        sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"] = p[c + "mlp.proj.weight"].T, p[c + "mlp.proj.bias"]
    return sd


def _hf_logits(inputs, sd=None, no_final_norm=False):
    from transformers import GPT2LMHeadModel

    from utils.models import gpt2_config

    V, P, d, L, H = (int(v) for v in inputs["config"])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config(V, P, d, L, H)).eval()
    missing, unexpected = model.load_state_dict(sd if sd is not None else _hf_state_dict(inputs), strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))], missing
    if no_final_norm:
        model.transformer.ln_f = torch.nn.Identity()
    with torch.no_grad():
        return model(_t(inputs, "ids")).logits


def gpt_reference(inputs):
    return {"logits": _hf_logits(inputs), "tied": np.asarray(True)}


def _gpt_variant(kind):
    def produce(inputs):
        if kind == "untied":
            return {"logits": _hf_logits(inputs), "tied": np.asarray(False)}
        if kind == "no final norm":
            return {"logits": _hf_logits(inputs, no_final_norm=True), "tied": np.asarray(True)}
        return {"logits": _hf_logits(inputs, _hf_state_dict(inputs, zero_positions=True)), "tied": np.asarray(True)}

    return produce


def _loaded(inputs, transpose_attention=True):
    """Every parameter of the course's GPT after loading the case's GPT-2 state dict with the course's
    loader (which the tests check against GPT2LMHeadModel's logits), as the call names them."""
    from utils.gpt import GPT, load_gpt2_weights

    V, P, d, L, H = (int(v) for v in inputs["config"])
    sd = {key[3:]: _t(inputs, key) for key in inputs if key.startswith("sd.")}
    if not transpose_attention:  # what a loader that forgets to transpose the square matrices produces
        for key in list(sd):
            if key.endswith("attn.c_attn.weight"):
                sd[key] = torch.cat([w.T for w in sd[key].split(d, dim=1)], dim=1)
            elif key.endswith("attn.c_proj.weight"):
                sd[key] = sd[key].T
    model = load_gpt2_weights(GPT(vocab_size=V, n_positions=P, d_model=d, n_layers=L, n_heads=H), sd)
    return {name.replace(".", "_"): value.detach().clone() for name, value in model.named_parameters(remove_duplicate=False)}


ORACLES = {
    LAYER_NORM.id: Oracle(
        reference=ln_reference,
        detectors=(
            Detector("unbiased variance", _ln_variant(unbiased=True),
                     "the variance is the unbiased one (divided by d - 1): LayerNorm uses the biased variance, "
                     "x.var(-1, keepdim=True, unbiased=False)"),
            Detector("eps outside the root", _ln_variant(eps_outside=True),
                     "eps is added to the standard deviation: add it to the variance, inside the square root, "
                     "(x - mean) / torch.sqrt(var + eps)"),
            Detector("whole-tensor statistics", _ln_variant(whole=True),
                     "the mean and variance are taken over the whole tensor: LayerNorm normalises each "
                     "position's vector on its own, over the last axis (dim=-1, keepdim=True)"),
        ),
    ),
    FEED_FORWARD.id: Oracle(
        reference=lambda inputs: _ff(inputs, lambda h: F.gelu(h, approximate="tanh")),
        detectors=(
            Detector("exact GELU", lambda inputs: _ff(inputs, F.gelu),
                     "this is the exact (erf) GELU; GPT-2 uses the tanh approximation: "
                     "0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))"),
            Detector("ReLU", lambda inputs: _ff(inputs, torch.relu),
                     "this is a ReLU: GPT-2's feed-forward layer uses GELU (tanh form), which is smooth and "
                     "lets small negative values through"),
            Detector("no activation", lambda inputs: _ff(inputs, lambda h: h),
                     "there is no activation between the two layers, so they collapse into one linear map: "
                     "apply GELU (tanh form) to the output of `fc`"),
        ),
    ),
    SINUSOIDAL.id: Oracle(
        reference=sin_reference,
        detectors=(
            Detector("sin and cos in halves", _sin_variant("halves"),
                     "sines and cosines are in two halves; they alternate: even columns sin, odd columns cos "
                     "(pe[:, 0::2] = sin, pe[:, 1::2] = cos)"),
            Detector("sin and cos swapped", _sin_variant("swapped"),
                     "sin and cos are swapped: even columns (0, 2, ...) hold the sines"),
        ),
    ),
    BLOCK.id: Oracle(
        reference=_block,
        detectors=(
            Detector("post-norm", lambda inputs: _block(inputs, "post-norm"),
                     "this is the original Transformer's post-norm, ln(x + attn(x)); GPT-2 normalises the "
                     "input of each sub-layer and adds its output to x unnormalised: x = x + attn(ln_1(x))"),
            Detector("no residual", lambda inputs: _block(inputs, "no residual"),
                     "the residual connections are missing: add each sub-layer's output to its input, "
                     "x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))"),
            Detector("not causal", lambda inputs: _block(inputs, "not causal"),
                     "the attention is not causal: each position sees later ones. Use "
                     "utils.models.CausalSelfAttention, which masks the future"),
            Detector("one norm for both", lambda inputs: _block(inputs, "one norm"),
                     "ln_1 is used before the feed-forward layer too: the second sub-layer has its own ln_2"),
        ),
    ),
    GPT_EXERCISE.id: Oracle(
        reference=gpt_reference,
        detectors=(
            Detector("untied head", _gpt_variant("untied"),
                     "lm_head has its own weight: tie it to the token embedding, self.lm_head.weight = self.wte.weight"),
            Detector("no final norm", _gpt_variant("no final norm"),
                     "the final LayerNorm is missing: apply ln_f to the output of the last block before lm_head"),
            Detector("no positions", _gpt_variant("no positions"),
                     "the position embeddings are missing: add wpe(torch.arange(T)) to the token embeddings"),
        ),
    ),
    LOAD.id: Oracle(
        reference=_loaded,
        detectors=(
            Detector("Conv1D not transposed", lambda inputs: _loaded(inputs, transpose_attention=False),
                     "GPT-2's Conv1D stores weight as (in, out) while nn.Linear stores (out, in): copy "
                     "w.t() into q_proj, k_proj, v_proj and out_proj too (square matrices fit either way)"),
        ),
    ),
}
