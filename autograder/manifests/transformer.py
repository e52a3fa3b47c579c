"""Notebook 02 - the transformer block: LayerNorm, FeedForward, positions, the block, GPT, GPT-2 weights.

The kernel-side half: inputs, calls and cases (oracles and known mistakes: ``autograder/oracles``).
``TransformerBlock`` is graded on its wiring (forward hooks record what each sub-module received and
returned), so a wrong LayerNorm or FeedForward does not fail it too. ``GPT`` receives its weights in
the course's own names and is compared end to end with ``GPT2LMHeadModel`` (a failure of an earlier
exercise it runs is named in its message); ``load_gpt2_weights`` fills an empty model of those names,
so neither needs the other's solution.
"""
from __future__ import annotations

import math

import numpy as np

from ..spec import Assignment, Case, Exercise

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


LAYER_NORM = Exercise(
    id="transformer.layer_norm",
    callable="LayerNorm",
    points=2,
    summary="nn.Module with `weight`, `bias` (d,); (x - mean) / sqrt(var + eps) * weight + bias over the last axis",
    make_inputs=ln_inputs,
    call=call_ln,
    cases=(
        Case("(B, T, d), shifted and scaled", {"shape": (2, 5, 8), "offset": 3.0, "scale": 4.0}),
        Case("nearly constant rows", {"shape": (3, 16), "offset": 0.01, "scale": 1e-3}),
        Case("wide d", {"shape": (2, 3, 4, 64), "offset": -2.0, "scale": 0.5}, hidden=True),
        Case("tiny variance, (B, T, d)", {"shape": (2, 6, 12), "scale": 3e-3}, hidden=True),
    ),
    library=("layer_norm", "LayerNorm"),
    reference_impl="utils.gpt:LayerNorm",
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


FEED_FORWARD = Exercise(
    id="transformer.feed_forward",
    callable="FeedForward",
    points=2,
    summary="nn.Module with nn.Linear `fc` (d -> d_ff) and `proj` (d_ff -> d), GPT-2's tanh GELU between",
    make_inputs=ff_inputs,
    call=call_ff,
    cases=(
        Case("d=8, d_ff=32", {"B": 2, "T": 4, "d_model": 8, "d_ff": 32}),
        Case("d=16, d_ff=24", {"B": 1, "T": 6, "d_model": 16, "d_ff": 24}),
        Case("d=32, d_ff=128", {"B": 3, "T": 5, "d_model": 32, "d_ff": 128}, hidden=True),
    ),
    reference_impl="utils.gpt:FeedForward",
)

# --------------------------------------------------------------------------- transformer.sinusoidal


def sin_inputs(params, rng):
    return {"T": np.asarray(params["T"]), "d": np.asarray(params["d"])}


def call_sin(fn, inputs):
    return {"pe": fn(int(inputs["T"]), int(inputs["d"]))}


SINUSOIDAL = Exercise(
    id="transformer.sinusoidal",
    callable="sinusoidal_positions",
    points=1,
    summary="(T, d) float32: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))",
    make_inputs=sin_inputs,
    call=call_sin,
    atol=1e-5,
    rtol=1e-4,
    cases=(Case("T=4, d=6", {"T": 4, "d": 6}), Case("T=50, d=16", {"T": 50, "d": 16}),
           Case("T=128, d=64", {"T": 128, "d": 64}, hidden=True)),
    reference_impl="utils.gpt:sinusoidal_positions",
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
    """Build the learner's block, load the case's weights and run it, recording with forward hooks
    what each sub-module (ln_1, attn, ln_2, mlp) received and returned: the trusted side checks the
    block's wiring from these, so a wrong LayerNorm or FeedForward (graded on their own) does not
    fail the block too."""
    import numpy as np
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
                                     "(utils.models.CausalSelfAttention), ln_2 and mlp (your FeedForward)")
            value = torch.tensor(inputs[name])
            if tuple(params[name].shape) != tuple(value.shape):
                raise ValueError(f"`{name}` has shape {tuple(params[name].shape)}, expected {tuple(value.shape)}")
            params[name].copy_(value)
    parts = ("ln_1", "attn", "ln_2", "mlp")
    seen = {part: [] for part in parts}

    def recorder(part):
        def hook(_module, args, kwargs, output):
            first = args[0] if args else next(iter(kwargs.values()), None)
            seen[part].append((first, output))
        return hook

    handles = [getattr(module, part).register_forward_hook(recorder(part), with_kwargs=True) for part in parts]
    try:
        module.eval()
        with torch.no_grad():
            y = module(torch.tensor(inputs["x"]))
    finally:
        for handle in handles:
            handle.remove()
    outputs = {"y": y, "calls": np.asarray([len(seen[part]) for part in parts], dtype=np.int64)}
    for part in parts:   # the first call of each sub-module (zeros if it was never called)
        given, returned = seen[part][0] if seen[part] else (torch.zeros_like(y), torch.zeros_like(y))
        if not isinstance(given, torch.Tensor) or not isinstance(returned, torch.Tensor):
            raise TypeError(f"`{part}` must take and return a tensor")
        outputs[part + "_in"], outputs[part + "_out"] = given, returned
    return outputs


BLOCK = Exercise(
    id="transformer.block",
    callable="TransformerBlock",
    points=3,
    summary="pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); (B, T, d) -> (B, T, d); graded on its wiring",
    make_inputs=block_inputs,
    call=call_block,
    atol=1e-5,
    rtol=1e-4,
    cases=(
        Case("B=2, T=5, d=16, 4 heads", {"B": 2, "T": 5, "d_model": 16, "n_heads": 4}),
        Case("B=1, T=8, d=24, 3 heads", {"B": 1, "T": 8, "d_model": 24, "n_heads": 3}),
        Case("B=3, T=12, d=32, 8 heads", {"B": 3, "T": 12, "d_model": 32, "n_heads": 8}, hidden=True),
    ),
    library=("GPT2Block",),
    reference_impl="utils.gpt:TransformerBlock",
    builds_on=("transformer.layer_norm", "transformer.feed_forward"),   # it runs them (a crash there stops it)
)

# --------------------------------------------------------------------------- transformer.gpt and load_gpt2_weights


def _course_names(L: int) -> list[str]:
    """The parameters of the course's GPT (and of the learner's), in a fixed order."""
    names = ["wte.weight", "wpe.weight"]
    for i in range(L):
        p = f"blocks.{i}."
        names += [p + n for n in ("ln_1.weight", "ln_1.bias", "attn.q_proj.weight", "attn.q_proj.bias",
                                  "attn.k_proj.weight", "attn.k_proj.bias", "attn.v_proj.weight", "attn.v_proj.bias",
                                  "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias",
                                  "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias")]
    return names + ["ln_f.weight", "ln_f.bias"]


def _course_shape(name: str, V: int, P: int, d: int) -> tuple:
    if name == "wte.weight":
        return (V, d)
    if name == "wpe.weight":
        return (P, d)
    if "proj.weight" in name and "mlp" not in name:
        return (d, d)
    if name.endswith("mlp.fc.weight"):
        return (4 * d, d)
    if name.endswith("mlp.proj.weight"):
        return (d, 4 * d)
    if name.endswith("mlp.fc.bias"):
        return (4 * d,)
    return (d,)


def gpt_inputs(params, rng):
    """A GPT-2 of the case's size with random weights, in the course's names (``p.<name>``), and ids."""
    V, P, d, L, H = params["V"], params["P"], params["d"], params["L"], params["H"]
    inputs = {"config": np.asarray([V, P, d, L, H], dtype=np.int64),
              "ids": rng.integers(0, V, size=(params["B"], params["T"])).astype(np.int64)}
    for name in _course_names(L):
        shape = _course_shape(name, V, P, d)
        if name.endswith("bias"):
            value = 0.05 * rng.standard_normal(shape)
        elif "ln_" in name:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.2 * rng.standard_normal(shape)
        inputs["p." + name] = value.astype(np.float32)
    return inputs


def call_gpt(fn, inputs):
    import torch

    V, P, d, L, H = (int(v) for v in inputs["config"])
    model = fn(vocab_size=V, n_positions=P, d_model=d, n_layers=L, n_heads=H)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"GPT(...) must build an nn.Module, got {type(model).__name__}")
    tied = getattr(getattr(model, "lm_head", None), "weight", None) is getattr(getattr(model, "wte", None), "weight", 0)
    state = {key[2:]: torch.tensor(value) for key, value in inputs.items() if key.startswith("p.")}
    state["lm_head.weight"] = state["wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AttributeError(f"the model's parameters are not named as in the docstring: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]} (use wte, wpe, blocks[i] with ln_1, attn, ln_2, mlp, "
                             "then ln_f and lm_head)")
    model.eval()
    with torch.no_grad():
        return {"logits": model(torch.tensor(inputs["ids"])), "tied": bool(tied)}


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
    atol=1e-5,
    rtol=0.0,   # the same logits as GPT2LMHeadModel to 1e-5, absolutely (float32 noise is ~4e-6 here)
    cases=GPT_CASES,
    builds_on=("transformer.layer_norm", "transformer.feed_forward", "transformer.block"),
    library=("GPT2LMHeadModel", "GPT2Model"),
    reference_impl="utils.gpt:GPT",
)


def load_inputs(params, rng):
    """A GPT2LMHeadModel's state dict of the case's size (``sd.<key>``, Hugging Face's names)."""
    V, P, d, L = params["V"], params["P"], params["d"], params["L"]
    inputs = {"config": np.asarray([V, P, d, L, params["H"]], dtype=np.int64)}

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


def call_load(fn, inputs):
    """The learner's loader fills an empty model with the course's parameter names (and no forward, so
    this exercise is graded on its own, whatever the learner's GPT does); every parameter comes back."""
    import torch
    from torch import nn

    V, P, d, L, H = (int(v) for v in inputs["config"])

    def module(**children):
        m = nn.Module()
        for name, child in children.items():
            setattr(m, name, child)
        return m

    def block():
        attn = module(q_proj=nn.Linear(d, d), k_proj=nn.Linear(d, d), v_proj=nn.Linear(d, d), out_proj=nn.Linear(d, d))
        return module(ln_1=nn.LayerNorm(d), attn=attn, ln_2=nn.LayerNorm(d),
                      mlp=module(fc=nn.Linear(d, 4 * d), proj=nn.Linear(4 * d, d)))

    model = module(wte=nn.Embedding(V, d), wpe=nn.Embedding(P, d), blocks=nn.ModuleList(block() for _ in range(L)),
                   ln_f=nn.LayerNorm(d), lm_head=nn.Linear(d, V, bias=False))
    model.lm_head.weight = model.wte.weight
    model.n_positions, model.config = P, {"vocab_size": V, "n_positions": P, "d_model": d, "n_layers": L, "n_heads": H}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))      # a parameter the loader forgets stays NaN
    state = {key[3:]: torch.tensor(value) for key, value in inputs.items() if key.startswith("sd.")}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    returned = fn(model, state)
    model = returned if isinstance(returned, nn.Module) else model
    params = dict(model.named_parameters(remove_duplicate=False))
    return {name.replace(".", "_"): params[name] for name in sorted(params)}


LOAD = Exercise(
    id="transformer.load_gpt2_weights",
    callable="load_gpt2_weights",
    points=3,
    summary="copy a GPT2LMHeadModel state dict into the course's GPT: split c_attn, transpose Conv1D weights",
    make_inputs=load_inputs,
    call=call_load,
    atol=0.0,
    rtol=0.0,   # copies are exact
    cases=GPT_CASES,
    library=("GPT2LMHeadModel",),
    reference_impl="utils.gpt:load_gpt2_weights",
)

ASSIGNMENT = Assignment(
    notebook="02_transformer",
    title="The transformer block",
    exercises=(LAYER_NORM, FEED_FORWARD, SINUSOIDAL, BLOCK, GPT_EXERCISE, LOAD),
    references=("utils.gpt",),
)
