"""Notebook 02 - the transformer block: LayerNorm, FeedForward, positions, the block, GPT, GPT-2 weights.

Oracles: ``torch.nn.LayerNorm``, ``F.gelu(approximate="tanh")``, the sinusoid formula written out in
NumPy, and ``transformers.GPT2LMHeadModel`` (built from a small ``GPT2Config``, random weights given
by the case) for the whole model. The block is compared with the course's reference,
``utils.gpt.TransformerBlock``, which the tests check against ``GPT2LMHeadModel``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..spec import Assignment, Case, Detector, Exercise


def _t(inputs, key):
    return torch.from_numpy(np.array(inputs[key], copy=True))


# --------------------------------------------------------------------------- transformer.layer_norm


def ln_inputs(params, rng):
    shape = tuple(params["shape"])
    d = shape[-1]
    x = params.get("offset", 0.0) + params.get("scale", 1.0) * rng.standard_normal(shape)
    return {
        "x": x.astype(np.float32),
        "weight": (1.0 + 0.5 * rng.standard_normal(d)).astype(np.float32),
        "bias": (0.5 * rng.standard_normal(d)).astype(np.float32),
    }


def call_ln(fn, inputs):
    import torch

    d = int(inputs["x"].shape[-1])
    module = fn(d)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"LayerNorm(d) must build an nn.Module, got {type(module).__name__}")
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if not isinstance(param, torch.Tensor) or tuple(param.shape) != (d,):
                raise AttributeError(f"LayerNorm needs a parameter `{name}` of shape ({d},)")
            param.copy_(torch.tensor(inputs[name]))
        return {"y": module(torch.tensor(inputs["x"]))}


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


LAYER_NORM = Exercise(
    id="transformer.layer_norm",
    callable="LayerNorm",
    points=2,
    summary="nn.Module with `weight`, `bias` (d,); (x - mean) / sqrt(var + eps) * weight + bias over the last axis",
    make_inputs=ln_inputs,
    call=call_ln,
    reference=ln_reference,
    cases=(
        Case("(B, T, d), shifted and scaled", {"shape": (2, 5, 8), "offset": 3.0, "scale": 4.0}),
        Case("nearly constant rows", {"shape": (3, 16), "offset": 0.01, "scale": 1e-3}),
        Case("wide d", {"shape": (2, 3, 4, 64), "offset": -2.0, "scale": 0.5}, hidden=True),
        Case("tiny variance, (B, T, d)", {"shape": (2, 6, 12), "scale": 3e-3}, hidden=True),
    ),
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
)

# --------------------------------------------------------------------------- transformer.feed_forward


def ff_inputs(params, rng):
    d, d_ff = params["d_model"], params["d_ff"]
    return {
        "x": (params.get("scale", 3.0) * rng.standard_normal((params["B"], params["T"], d))).astype(np.float32),
        "fc_weight": (rng.standard_normal((d_ff, d)) / math.sqrt(d)).astype(np.float32),
        "fc_bias": (0.3 * rng.standard_normal(d_ff)).astype(np.float32),
        "proj_weight": (rng.standard_normal((d, d_ff)) / math.sqrt(d_ff)).astype(np.float32),
        "proj_bias": (0.3 * rng.standard_normal(d)).astype(np.float32),
    }


def call_ff(fn, inputs):
    import torch

    d_ff, d = inputs["fc_weight"].shape
    module = fn(int(d), int(d_ff))
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"FeedForward(d_model, d_ff) must build an nn.Module, got {type(module).__name__}")
    with torch.no_grad():
        for name in ("fc", "proj"):
            layer = getattr(module, name, None)
            if not isinstance(layer, torch.nn.Linear):
                raise AttributeError(f"FeedForward needs an nn.Linear called `{name}` (found {type(layer).__name__})")
            weight = torch.tensor(inputs[f"{name}_weight"])
            if tuple(layer.weight.shape) != tuple(weight.shape) or layer.bias is None:
                raise ValueError(f"`{name}` must be nn.Linear with weight shape {tuple(weight.shape)} and a bias; "
                                 f"found {tuple(layer.weight.shape)}")
            layer.weight.copy_(weight)
            layer.bias.copy_(torch.tensor(inputs[f"{name}_bias"]))
        return {"y": module(torch.tensor(inputs["x"]))}


def _ff(inputs, activation):
    hidden = _t(inputs, "x") @ _t(inputs, "fc_weight").T + _t(inputs, "fc_bias")   # (B, T, d_ff)
    return {"y": activation(hidden) @ _t(inputs, "proj_weight").T + _t(inputs, "proj_bias")}


FEED_FORWARD = Exercise(
    id="transformer.feed_forward",
    callable="FeedForward",
    points=2,
    summary="nn.Module with nn.Linear `fc` (d -> d_ff) and `proj` (d_ff -> d), GPT-2's tanh GELU between",
    make_inputs=ff_inputs,
    call=call_ff,
    reference=lambda inputs: _ff(inputs, lambda h: F.gelu(h, approximate="tanh")),
    cases=(
        Case("d=8, d_ff=32", {"B": 2, "T": 4, "d_model": 8, "d_ff": 32}),
        Case("d=16, d_ff=24", {"B": 1, "T": 6, "d_model": 16, "d_ff": 24}),
        Case("d=32, d_ff=128", {"B": 3, "T": 5, "d_model": 32, "d_ff": 128}, hidden=True),
    ),
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
)

# --------------------------------------------------------------------------- transformer.sinusoidal


def sin_inputs(params, rng):
    return {"T": np.asarray(params["T"]), "d": np.asarray(params["d"])}


def call_sin(fn, inputs):
    return {"pe": fn(int(inputs["T"]), int(inputs["d"]))}


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


SINUSOIDAL = Exercise(
    id="transformer.sinusoidal",
    callable="sinusoidal_positions",
    points=1,
    summary="(T, d) float32: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))",
    make_inputs=sin_inputs,
    call=call_sin,
    reference=sin_reference,
    atol=1e-5,
    rtol=1e-4,
    cases=(Case("T=4, d=6", {"T": 4, "d": 6}), Case("T=50, d=16", {"T": 50, "d": 16}),
           Case("T=128, d=64", {"T": 128, "d": 64}, hidden=True)),
    detectors=(
        Detector("sin and cos in halves", _sin_variant("halves"),
                 "sines and cosines are in two halves; they alternate: even columns sin, odd columns cos "
                 "(pe[:, 0::2] = sin, pe[:, 1::2] = cos)"),
        Detector("sin and cos swapped", _sin_variant("swapped"),
                 "sin and cos are swapped: even columns (0, 2, ...) hold the sines"),
    ),
)

# --------------------------------------------------------------------------- transformer.block

_BLOCK_NAMES = ("ln_1.weight", "ln_1.bias", "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight",
                "attn.k_proj.bias", "attn.v_proj.weight", "attn.v_proj.bias", "attn.out_proj.weight",
                "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias",
                "mlp.proj.weight", "mlp.proj.bias")


def block_inputs(params, rng):
    d, heads, B, T = params["d_model"], params["n_heads"], params["B"], params["T"]
    shapes = {"ln_1": (d,), "ln_2": (d,), "attn.q_proj": (d, d), "attn.k_proj": (d, d), "attn.v_proj": (d, d),
              "attn.out_proj": (d, d), "mlp.fc": (4 * d, d), "mlp.proj": (d, 4 * d)}
    inputs = {"n_heads": np.asarray(heads), "x": rng.standard_normal((B, T, d)).astype(np.float32)}
    for name in _BLOCK_NAMES:
        module, kind = name.rsplit(".", 1)
        shape = shapes[module]
        if module.startswith("ln"):
            value = (1.0 if kind == "weight" else 0.0) + 0.3 * rng.standard_normal(d)
        elif kind == "weight":
            value = rng.standard_normal(shape) / math.sqrt(shape[1])
        else:
            value = 0.1 * rng.standard_normal(shape[0])
        inputs[name] = value.astype(np.float32)
    return inputs


def call_block(fn, inputs):
    import torch

    d = int(inputs["x"].shape[-1])
    module = fn(d, int(inputs["n_heads"]))
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"TransformerBlock(d_model, n_heads) must build an nn.Module, got {type(module).__name__}")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name in inputs:
            if name in ("x", "n_heads"):
                continue
            if name not in params:
                raise AttributeError(f"the block has no parameter `{name}`: use the names ln_1, attn "
                                     "(utils.gpt.CausalSelfAttention), ln_2 and mlp (your FeedForward)")
            value = torch.tensor(inputs[name])
            if tuple(params[name].shape) != tuple(value.shape):
                raise ValueError(f"`{name}` has shape {tuple(params[name].shape)}, expected {tuple(value.shape)}")
            params[name].copy_(value)
        module.eval()
        return {"y": module(torch.tensor(inputs["x"]))}


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


BLOCK = Exercise(
    id="transformer.block",
    callable="TransformerBlock",
    points=3,
    summary="pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); (B, T, d) -> (B, T, d)",
    make_inputs=block_inputs,
    call=call_block,
    reference=_block,
    atol=1e-5,
    rtol=1e-4,
    cases=(
        Case("B=2, T=5, d=16, 4 heads", {"B": 2, "T": 5, "d_model": 16, "n_heads": 4}),
        Case("B=1, T=8, d=24, 3 heads", {"B": 1, "T": 8, "d_model": 24, "n_heads": 3}),
        Case("B=3, T=12, d=32, 8 heads", {"B": 3, "T": 12, "d_model": 32, "n_heads": 8}, hidden=True),
    ),
    detectors=(
        Detector("post-norm", lambda inputs: _block(inputs, "post-norm"),
                 "this is the original Transformer's post-norm, ln(x + attn(x)); GPT-2 normalises the "
                 "input of each sub-layer and adds its output to x unnormalised: x = x + attn(ln_1(x))"),
        Detector("no residual", lambda inputs: _block(inputs, "no residual"),
                 "the residual connections are missing: add each sub-layer's output to its input, "
                 "x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))"),
        Detector("not causal", lambda inputs: _block(inputs, "not causal"),
                 "the attention is not causal: each position sees later ones. Use "
                 "utils.gpt.CausalSelfAttention, which masks the future"),
        Detector("one norm for both", lambda inputs: _block(inputs, "one norm"),
                 "ln_1 is used before the feed-forward layer too: the second sub-layer has its own ln_2"),
    ),
)

# --------------------------------------------------------------------------- transformer.gpt and load_gpt2_weights


def gpt_inputs(params, rng):
    """A GPT-2 of the case's size with random weights, in Hugging Face's names (``sd.<key>``), and ids."""
    V, P, d, L, H = params["V"], params["P"], params["d"], params["L"], params["H"]
    inputs = {"config": np.asarray([V, P, d, L, H], dtype=np.int64),
              "ids": rng.integers(0, V, size=(params["B"], params["T"])).astype(np.int64)}

    def put(key, shape, kind="weight"):
        if kind == "ln_weight":
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif kind == "bias":
            value = 0.05 * rng.standard_normal(shape)
        else:
            value = 0.2 * rng.standard_normal(shape)
        inputs["sd." + key] = value.astype(np.float32)

    put("transformer.wte.weight", (V, d))
    put("transformer.wpe.weight", (P, d))
    for i in range(L):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            put(p + ln + ".weight", (d,), "ln_weight")
            put(p + ln + ".bias", (d,), "bias")
        for name, shape in (("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)),
                            ("mlp.c_fc", (d, 4 * d)), ("mlp.c_proj", (4 * d, d))):
            put(p + name + ".weight", shape)
            put(p + name + ".bias", (shape[1],), "bias")
    put("transformer.ln_f.weight", (d,), "ln_weight")
    put("transformer.ln_f.bias", (d,), "bias")
    return inputs


def _hf_state_dict(inputs):
    sd = {key[3:]: _t(inputs, key) for key in inputs if key.startswith("sd.")}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def _hf_logits(inputs, sd=None, no_final_norm=False):
    from transformers import GPT2LMHeadModel

    from utils.gpt import gpt2_config

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


def call_gpt(fn, inputs):
    import torch

    from utils.gpt import load_gpt2_weights

    V, P, d, L, H = (int(v) for v in inputs["config"])
    model = fn(vocab_size=V, n_positions=P, d_model=d, n_layers=L, n_heads=H)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"GPT(...) must build an nn.Module, got {type(model).__name__}")
    tied = getattr(getattr(model, "lm_head", None), "weight", None) is getattr(getattr(model, "wte", None), "weight", 0)
    load_gpt2_weights(model, {key[3:]: torch.tensor(value) for key, value in inputs.items() if key.startswith("sd.")})
    model.eval()
    with torch.no_grad():
        return {"logits": model(torch.tensor(inputs["ids"])), "tied": bool(tied)}


def _gpt_variant(kind):
    def produce(inputs):
        sd = _hf_state_dict(inputs)
        if kind == "untied":
            return {"logits": _hf_logits(inputs), "tied": np.asarray(False)}
        if kind == "no final norm":
            return {"logits": _hf_logits(inputs, no_final_norm=True), "tied": np.asarray(True)}
        if kind == "no positions":
            sd["transformer.wpe.weight"] = torch.zeros_like(sd["transformer.wpe.weight"])
        return {"logits": _hf_logits(inputs, sd), "tied": np.asarray(True)}

    return produce


GPT_CASES = (
    Case("V=64, d=32, 2 layers", {"V": 64, "P": 16, "d": 32, "L": 2, "H": 4, "B": 2, "T": 7}),
    Case("full context, 1 layer", {"V": 50, "P": 8, "d": 16, "L": 1, "H": 2, "B": 1, "T": 8}),
    Case("V=100, d=48, 3 layers", {"V": 100, "P": 32, "d": 48, "L": 3, "H": 6, "B": 2, "T": 32}, hidden=True),
)

GPT_EXERCISE = Exercise(
    id="transformer.gpt",
    callable="GPT",
    points=3,
    summary="GPT(vocab_size, n_positions, d_model, n_layers, n_heads): wte + wpe, blocks, ln_f, tied lm_head",
    make_inputs=gpt_inputs,
    call=call_gpt,
    reference=gpt_reference,
    atol=1e-5,
    rtol=0.0,   # the same logits as GPT2LMHeadModel to 1e-5, absolutely (float32 noise is ~4e-6 here)
    cases=GPT_CASES,
    detectors=(
        Detector("untied head", _gpt_variant("untied"),
                 "lm_head has its own weight: tie it to the token embedding, self.lm_head.weight = self.wte.weight"),
        Detector("no final norm", _gpt_variant("no final norm"),
                 "the final LayerNorm is missing: apply ln_f to the output of the last block before lm_head"),
        Detector("no positions", _gpt_variant("no positions"),
                 "the position embeddings are missing: add wpe(torch.arange(T)) to the token embeddings"),
    ),
)


def call_load(fn, inputs):
    import torch

    from utils.gpt import GPT

    V, P, d, L, H = (int(v) for v in inputs["config"])
    torch.manual_seed(0)
    model = GPT(vocab_size=V, n_positions=P, d_model=d, n_layers=L, n_heads=H)
    state = {key[3:]: torch.tensor(value) for key, value in inputs.items() if key.startswith("sd.")}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    returned = fn(model, state)
    model = returned if isinstance(returned, torch.nn.Module) else model
    model.eval()
    with torch.no_grad():
        return {"logits": model(torch.tensor(inputs["ids"]))}


def _load_variant(inputs):
    """What a loader that copies Conv1D weights without transposing them computes (square ones fit silently)."""
    sd = _hf_state_dict(inputs)
    d = int(inputs["config"][2])
    for key in list(sd):
        if key.endswith("attn.c_attn.weight"):
            sd[key] = torch.cat([w.T for w in sd[key].split(d, dim=1)], dim=1)
        elif key.endswith("attn.c_proj.weight"):
            sd[key] = sd[key].T
    return {"logits": _hf_logits(inputs, sd)}


LOAD = Exercise(
    id="transformer.load_gpt2_weights",
    callable="load_gpt2_weights",
    points=3,
    summary="copy a GPT2LMHeadModel state dict into the course's GPT: split c_attn, transpose Conv1D weights",
    make_inputs=gpt_inputs,
    call=call_load,
    reference=lambda inputs: {"logits": _hf_logits(inputs)},
    atol=1e-5,
    rtol=0.0,
    cases=GPT_CASES,
    detectors=(
        Detector("Conv1D not transposed", _load_variant,
                 "GPT-2's Conv1D stores weight as (in, out) while nn.Linear stores (out, in): copy "
                 "w.t() into q_proj, k_proj, v_proj and out_proj too (square matrices fit either way)"),
    ),
)

ASSIGNMENT = Assignment(
    notebook="02_transformer",
    title="The transformer block",
    exercises=(LAYER_NORM, FEED_FORWARD, SINUSOIDAL, BLOCK, GPT_EXERCISE, LOAD),
)
