"""Notebook 02, trusted side: references and known mistakes of the transformer exercises.

Oracles: ``torch.nn.LayerNorm``, ``F.gelu(approximate="tanh")``, the sinusoid formula written out in
NumPy, and ``transformers.GPT2LMHeadModel`` (built from a small ``GPT2Config``, random weights given
by the case) for the whole model. The block is judged on its wiring: forward hooks in the learner's
kernel record what each sub-module took and returned, and :func:`block_judge` checks how they are
connected, with the attention recomputed by ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..compare import expect_array
from ..manifests.transformer import BLOCK, FEED_FORWARD, GPT_EXERCISE, LAYER_NORM, LOAD, SINUSOIDAL
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


_PARTS = ("ln_1", "attn", "ln_2", "mlp")


def _attention(inputs, h, causal=True):
    """Multi-head attention of ``h`` (B, T, d) with the case's weights, by PyTorch's own kernel."""
    B, T, d = h.shape
    heads = int(inputs["n_heads"])

    def linear(name, z):
        return z @ _t(inputs, f"attn.{name}.weight").T + _t(inputs, f"attn.{name}.bias")

    def split(z):
        return z.view(B, T, heads, d // heads).transpose(1, 2)                 # (B, H, T, d_head)

    out = F.scaled_dot_product_attention(split(linear("q_proj", h)), split(linear("k_proj", h)),
                                         split(linear("v_proj", h)), is_causal=causal)
    return linear("out_proj", out.transpose(1, 2).reshape(B, T, d))            # (B, T, d)


def _close(a, b) -> bool:
    return a.shape == b.shape and np.allclose(a, b, atol=BLOCK.atol, rtol=BLOCK.rtol)


def block_judge(inputs, got):
    """The block's wiring, from what forward hooks saw each sub-module take and return: x goes into
    ln_1, ln_1's output into the (causal) attention, x + attention into ln_2 and into the second
    residual, ln_2's output into mlp, and y = x + attention + mlp. The sub-modules' own arithmetic is
    not judged here (LayerNorm and FeedForward are exercises of their own); the attention is
    recomputed with the case's weights."""
    x = np.asarray(inputs["x"], dtype=np.float32)
    reason = expect_array(got, "calls", "int", (4,))
    if reason:
        return reason, None
    for key in ("y",) + tuple(f"{part}_{end}" for part in _PARTS for end in ("in", "out")):
        reason = expect_array(got, key, "float", x.shape)
        if reason:
            return reason, None
    calls = dict(zip(_PARTS, (int(n) for n in got["calls"])))
    if calls["ln_1"] >= 2 and calls["ln_2"] == 0:
        return ("ln_2 is never called and ln_1 twice", "ln_1 is used before the feed-forward layer too: the second "
                "sub-layer has its own ln_2, x = x + mlp(ln_2(x))")
    wrong = [f"{part} {n} times" for part, n in calls.items() if n != 1]
    if wrong:
        return (f"each sub-module must be called once per forward; here {', '.join(wrong)}",
                "call each of self.ln_1, self.attn, self.ln_2 and self.mlp once, as modules (self.ln_1(x), "
                "not self.ln_1.forward(x))")
    v = {key: got[key] for key in got}
    attn = _attention(inputs, torch.from_numpy(v["attn_in"].copy())).numpy()
    if not _close(v["ln_1_in"], x):
        if _close(v["attn_in"], x):
            return ("the attention reads x itself, not ln_1(x)", "this is the original Transformer's post-norm, "
                    "ln(x + attn(x)); GPT-2 normalises the input of each sub-layer and adds its output to x "
                    "unnormalised: x = x + attn(ln_1(x))")
        return "ln_1 does not receive the block's input x", "the first sub-layer is x + attn(ln_1(x))"
    if not _close(v["attn_in"], v["ln_1_out"]):
        return "the attention does not receive ln_1's output", "the first sub-layer is x + attn(ln_1(x))"
    if not _close(v["attn_out"], attn):
        if _close(v["attn_out"], _attention(inputs, torch.from_numpy(v["attn_in"].copy()), causal=False).numpy()):
            return ("each position's attention output depends on later positions",
                    "the attention is not causal: each position sees later ones. Use "
                    "utils.models.CausalSelfAttention, which masks the future")
        return ("`attn` does not compute causal multi-head attention with its q_proj, k_proj, v_proj and out_proj",
                "use utils.models.CausalSelfAttention(d_model, n_heads) as self.attn")
    residual = x + v["attn_out"]
    if not _close(v["ln_2_in"], residual):
        if _close(v["ln_2_in"], v["attn_out"]):
            return ("ln_2 receives attn(ln_1(x)) without x added", "the residual connections are missing: add "
                    "each sub-layer's output to its input, x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))")
        if _close(v["ln_2_in"], x):
            return ("ln_2 receives x, not x + attn(ln_1(x))", "the two sub-layers run one after the other: "
                    "first x = x + attn(ln_1(x)), then ln_2 sees that new x")
        return "ln_2 does not receive x + attn(ln_1(x))", None
    if not _close(v["mlp_in"], v["ln_2_out"]):
        return "mlp does not receive ln_2's output", "the second sub-layer is x + mlp(ln_2(x))"
    if not _close(v["y"], residual + v["mlp_out"]):
        if _close(v["y"], v["mlp_out"]):
            return ("the output is mlp(...) alone", "the residual connections are missing: add each sub-layer's "
                    "output to its input, x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))")
        return "the output is not x + attn(ln_1(x)) + mlp(ln_2(...))", "the block returns x after both residual additions"
    return None, None


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
    BLOCK.id: Oracle(judge=block_judge),   # the wiring; its hints name post-norm, missing residuals, ...
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
