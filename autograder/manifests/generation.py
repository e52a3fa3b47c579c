"""Notebook 05 - generation and decoding: Llama's pieces, the KV cache, generate, logits processors, sampling.

The kernel-side half (oracles and known mistakes: ``autograder/oracles/generation.py``). While 05
is graded its reference modules (``utils.llama``, ``utils.decoding``) are out of the kernel's
reach, so nothing here imports them:

* ``rms_norm``, ``apply_rope``, ``repeat_kv`` and the logits processors are pure functions on
  random tensors, compared with ``transformers``' own pieces (``LlamaRMSNorm``,
  ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``, ``repeat_kv``, ``TopKLogitsWarper``, ...).
* ``KVCache`` runs a script of updates and crops, compared with ``transformers.DynamicCache``.
* ``generate`` decodes with ``transformers``' ``LlamaForCausalLM`` behind a five-line adapter
  written in the call (the course's model interface: ``model(ids, cache=None) -> logits`` and
  ``model.new_cache()``, which returns a ``DynamicCache``): a small Llama with random weights
  given by the case, or the real SmolLM2 (``utils.generation.smollm2_hf``). The reference is
  ``LlamaForCausalLM.generate(do_sample=False)``.
* ``sample`` is random: the call draws many tokens with seeded generators and a judge tests them
  (chi-square against the softmax, at an exact tail probability).
"""
from __future__ import annotations

import math

import numpy as np

from ..spec import Assignment, Case, Exercise

# --------------------------------------------------------------------------- generation.rms_norm


def rms_inputs(params, rng):
    shape = tuple(params["shape"])
    x = params.get("offset", 0.0) + params.get("scale", 1.0) * rng.standard_normal(shape)
    return {"x": x.astype(np.float32), "weight": (1.0 + 0.5 * rng.standard_normal(shape[-1])).astype(np.float32),
            "eps": np.asarray(params.get("eps", 1e-5))}


def call_rms(fn, inputs):
    import torch

    return {"y": fn(torch.tensor(inputs["x"]), torch.tensor(inputs["weight"]), float(inputs["eps"]))}


RMS_NORM = Exercise(
    id="generation.rms_norm",
    callable="rms_norm",
    points=2,
    summary="x / sqrt(mean(x^2, last axis) + eps) * weight: no mean subtracted, no bias",
    make_inputs=rms_inputs,
    call=call_rms,
    cases=(
        Case("(B, T, d), shifted", {"shape": (2, 5, 16), "offset": 2.0, "scale": 3.0}),
        Case("tiny values, large eps", {"shape": (3, 8), "scale": 1e-3, "eps": 1e-4}),
        Case("SmolLM2's width", {"shape": (2, 7, 576), "offset": -1.0, "scale": 2.0, "eps": 1e-5}, hidden=True),
        Case("tiny values, (B, T, d)", {"shape": (1, 4, 32), "scale": 3e-3, "eps": 1e-6}, hidden=True),
    ),
    library=("LlamaRMSNorm", "rms_norm"),
    reference_impl="utils.llama:rms_norm",
)

# --------------------------------------------------------------------------- generation.apply_rope


def rope_inputs(params, rng):
    B, H, T, d = params["shape"]
    if params.get("per_row"):
        positions = np.sort(rng.integers(0, params.get("max_position", 8000), size=(B, T)), axis=1)
    else:
        positions = params.get("start", 0) + np.arange(T)
    return {"x": rng.standard_normal((B, H, T, d)).astype(np.float32), "positions": positions.astype(np.int64),
            "theta": np.asarray(float(params.get("theta", 10000.0)))}


def call_rope(fn, inputs):
    import torch

    x = torch.tensor(inputs["x"])
    original = x.clone()
    y = fn(x, torch.tensor(inputs["positions"]), float(inputs["theta"]))
    if not torch.equal(x, original):
        raise ValueError("apply_rope changed its input x in place: return a new tensor")
    return {"y": y}


APPLY_ROPE = Exercise(
    id="generation.apply_rope",
    callable="apply_rope",
    points=3,
    summary="rotate pairs (x_i, x_{i+d/2}) by p * theta^(-2i/d): x * cos + rotate_half(x) * sin",
    make_inputs=rope_inputs,
    call=call_rope,
    cases=(
        Case("positions 0..4, theta 1e4", {"shape": (1, 2, 5, 8)}),
        Case("positions 7..10 (after a cache), theta 1e5", {"shape": (2, 3, 4, 16), "start": 7, "theta": 1e5}),
        Case("SmolLM2's heads, theta 1e5", {"shape": (1, 9, 6, 64), "start": 100, "theta": 1e5}, hidden=True),
        Case("per-row positions (B, T)", {"shape": (3, 2, 5, 32), "per_row": True, "theta": 5e5}, hidden=True),
    ),
    library=("apply_rotary_pos_emb", "LlamaRotaryEmbedding"),
    reference_impl="utils.llama:apply_rope",
)

# --------------------------------------------------------------------------- generation.repeat_kv


def repeat_inputs(params, rng):
    return {"x": rng.standard_normal(tuple(params["shape"])).astype(np.float32), "n_rep": np.asarray(params["n_rep"])}


def call_repeat(fn, inputs):
    import torch

    return {"y": fn(torch.tensor(inputs["x"]), int(inputs["n_rep"]))}


REPEAT_KV = Exercise(
    id="generation.repeat_kv",
    callable="repeat_kv",
    points=1,
    summary="(B, H_kv, T, d) -> (B, H_kv * n_rep, T, d): each key/value head repeated n_rep times in place",
    make_inputs=repeat_inputs,
    call=call_repeat,
    atol=0.0,
    rtol=0.0,
    cases=(
        Case("SmolLM2: 3 kv heads for 9 query heads", {"shape": (1, 3, 4, 8), "n_rep": 3}),
        Case("n_rep = 1 (plain multi-head)", {"shape": (2, 4, 3, 5), "n_rep": 1}),
        Case("2 kv heads, n_rep = 4", {"shape": (2, 2, 6, 16), "n_rep": 4}, hidden=True),
    ),
    library=("repeat_kv",),
    reference_impl="utils.llama:repeat_kv",
)

# --------------------------------------------------------------------------- generation.kv_cache

# One operation per row of `ops`: (0, layer, T_new) appends T_new positions to a layer; (1, length, 0) crops.


def cache_inputs(params, rng):
    B, H, d, L = params["B"], params["H"], params["d"], params["L"]
    ops = []
    for chunk in params["chunks"]:
        if chunk < 0:
            ops.append((1, -chunk, 0))
        else:
            ops += [(0, layer, chunk) for layer in range(L)]
    total = sum(t for kind, _, t in ops if kind == 0)
    return {"ops": np.asarray(ops, dtype=np.int64), "n_layers": np.asarray(L),
            "keys": rng.standard_normal((total, B, H, d)).astype(np.float32),
            "values": rng.standard_normal((total, B, H, d)).astype(np.float32)}


def call_cache(fn, inputs):
    import torch

    L = int(inputs["n_layers"])
    keys, values = torch.tensor(inputs["keys"]), torch.tensor(inputs["values"])
    cache = fn()
    used, got_k, got_v, lengths = 0, [], [], []
    for kind, a, b in inputs["ops"].tolist():
        if kind == 0:
            k = keys[used:used + b].permute(1, 2, 0, 3).contiguous()     # (B, H, T_new, d)
            v = values[used:used + b].permute(1, 2, 0, 3).contiguous()
            used += b
            returned = cache.update(k, v, a)
            if not isinstance(returned, tuple) or len(returned) != 2:
                raise TypeError(f"update must return a tuple (keys, values), got {type(returned).__name__}")
            got_k.append(torch.as_tensor(returned[0]).reshape(-1))
            got_v.append(torch.as_tensor(returned[1]).reshape(-1))
        else:
            cache.crop(a)
        lengths.append([int(cache.get_seq_length(layer)) for layer in range(L)])
    return {"keys": torch.cat(got_k), "values": torch.cat(got_v), "lengths": torch.tensor(lengths)}


KV_CACHE = Exercise(
    id="generation.kv_cache",
    callable="KVCache",
    points=3,
    summary="update(k, v, layer_idx) appends along time and returns the layer's keys/values; get_seq_length; crop",
    make_inputs=cache_inputs,
    call=call_cache,
    atol=0.0,
    rtol=0.0,
    cases=(
        Case("prefill 4, then 3 steps, 2 layers", {"B": 1, "H": 2, "d": 4, "L": 2, "chunks": (4, 1, 1, 1)}),
        Case("crop, then a chunk of 3", {"B": 2, "H": 1, "d": 3, "L": 3, "chunks": (5, 1, -4, 3, 1)}),
        Case("long, two crops", {"B": 1, "H": 3, "d": 8, "L": 4, "chunks": (7, 1, 1, -6, 2, 1, -8, 4)}, hidden=True),
    ),
    library=("DynamicCache",),
    reference_impl="utils.llama:KVCache",
)

# --------------------------------------------------------------------------- generation.generate

SMOLLM2_PROMPTS = (
    [504, 3575, 282, 4649, 314],                                   # The capital of France is
    [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 617],   # Once upon a time, there was a little robot who
    [504, 1296, 3003, 14797, 359],                                 # The three primary colours are
    [1604, 3987, 46477, 24, 94, 727],                              # def fibonacci(n):
    [33580, 14870, 314, 260, 980, 411, 527],                       # Photosynthesis is the process by which
    [5965, 20334, 11594, 327, 45137, 5909, 351],                   # My favourite recipe for pancakes starts with
    [504, 1463, 282, 260, 7510, 1757],                             # The history of the printing press
    [2068, 835, 253, 725, 1789, 3112, 28, 346, 868],              # To learn a new language quickly, you should
)


def tiny_llama_weights(rng, V, d, L, H, Hkv, ff):
    """Random weights of a small ``LlamaForCausalLM`` (its state-dict names, tied head left out), scaled
    so that its next-token distributions are peaked: greedy decoding then has clear winners."""
    hd = d // H
    w = {"model.embed_tokens.weight": rng.standard_normal((V, d)), "model.norm.weight": 1 + 0.1 * rng.standard_normal(d)}
    for i in range(L):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (H * hd, d)), ("self_attn.k_proj", (Hkv * hd, d)),
                            ("self_attn.v_proj", (Hkv * hd, d)), ("self_attn.o_proj", (d, H * hd)),
                            ("mlp.gate_proj", (ff, d)), ("mlp.up_proj", (ff, d)), ("mlp.down_proj", (d, ff))):
            w[p + name + ".weight"] = rng.standard_normal(shape) * (1.5 / math.sqrt(shape[1]))
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
    return {"w." + k: v.astype(np.float32) for k, v in w.items()}


def tiny_llama(inputs):
    """The case's small ``LlamaForCausalLM`` (trusted side and tests; the call builds its own)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    V, d, L, H, Hkv, ff = (int(v) for v in inputs["config"])
    config = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ff, num_hidden_layers=L, num_attention_heads=H,
                         num_key_value_heads=Hkv, max_position_embeddings=512, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": float(inputs["theta"])},
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(config).eval()
    state = {k[2:]: torch.tensor(v) for k, v in inputs.items() if k.startswith("w.")}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model


def generate_inputs(params, rng):
    n = params["new"]
    if params.get("smollm2"):
        prompt = list(SMOLLM2_PROMPTS[int(rng.integers(len(SMOLLM2_PROMPTS)))])
        inputs = {"config": np.zeros(6, dtype=np.int64), "theta": np.asarray(0.0)}
        ids = np.asarray([prompt], dtype=np.int64)
    else:
        V, d, L, H, Hkv, ff = params["config"]
        inputs = {"config": np.asarray(params["config"], dtype=np.int64), "theta": np.asarray(params.get("theta", 1e4)),
                  **tiny_llama_weights(rng, V, d, L, H, Hkv, ff)}
        ids = rng.integers(0, V, size=(params.get("B", 1), params["T"])).astype(np.int64)
    inputs.update({"input_ids": ids, "max_new_tokens": np.asarray(n), "eos": np.asarray(-1),
                   "uncached": np.asarray(int(params.get("uncached", True)))})
    if params.get("eos_at"):  # the token greedy decoding first produces at that step of row 0 becomes EOS
        import torch

        with torch.no_grad():
            out = tiny_llama(inputs).generate(torch.tensor(ids), attention_mask=torch.ones_like(torch.tensor(ids)),
                                              max_new_tokens=n, do_sample=False)[0, ids.shape[1]:].tolist()
        step = next((i for i in range(params["eos_at"], n) if out[i] not in out[:i]), n - 1)
        inputs["eos"] = np.asarray(out[step])
    return inputs


def call_generate(fn, inputs):
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    V, d, L, H, Hkv, ff = (int(v) for v in inputs["config"])
    if V == 0:                                      # the real SmolLM2, loaded once per kernel
        from utils.generation import smollm2_hf

        llama = smollm2_hf()[1]
    else:                                           # a small Llama with the case's random weights (not trained)
        config = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ff, num_hidden_layers=L,
                             num_attention_heads=H, num_key_value_heads=Hkv, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                             rope_parameters={"rope_type": "default", "rope_theta": float(inputs["theta"])})
        llama = LlamaForCausalLM(config).eval()
        state = {k[2:]: torch.tensor(v) for k, v in inputs.items() if k.startswith("w.")}
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        llama.load_state_dict(state, strict=True)

    class Model:
        """The course's model interface around transformers' Llama; it records what it is fed."""

        def __init__(self):
            self.fed = []

        def new_cache(self):
            return DynamicCache()

        def __call__(self, input_ids, cache=None):
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
                raise TypeError("the model takes input_ids as a (B, T) LongTensor, got "
                                f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} "
                                f"{tuple(getattr(input_ids, 'shape', ()))}")
            self.fed.append(int(input_ids.shape[1]))
            if len(self.fed) > 4 * int(inputs["max_new_tokens"]) + 8:
                raise RuntimeError("the model was called far more often than max_new_tokens times: does the loop stop?")
            with torch.no_grad():
                return llama(input_ids=input_ids, cache=cache, use_cache=cache is not None).logits

    ids = torch.tensor(inputs["input_ids"])
    eos = int(inputs["eos"]) if int(inputs["eos"]) >= 0 else None
    outputs = {}
    for name, use_cache in (("", True), ("_uncached", False)):
        if name and not int(inputs["uncached"]):
            continue
        model = Model()
        tokens = fn(model, ids.clone(), int(inputs["max_new_tokens"]), eos_token_id=eos, use_cache=use_cache)
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"generate must return a LongTensor (B, T + new tokens), got {type(tokens).__name__}")
        outputs["tokens" + name] = tokens
        outputs["fed" + name] = torch.tensor(model.fed, dtype=torch.long)
    return outputs


GENERATE = Exercise(
    id="generation.generate",
    callable="generate",
    points=4,
    summary="greedy decoding with a KV cache: prefill the prompt once, then one token per step; stop at EOS",
    make_inputs=generate_inputs,
    call=call_generate,
    cases=(
        Case("small Llama, 12 tokens", {"config": (64, 32, 2, 4, 2, 64), "T": 5, "new": 12}),
        Case("a batch of 2, theta 1e5", {"config": (80, 48, 3, 6, 2, 96), "theta": 1e5, "B": 2, "T": 7, "new": 10}),
        Case("stops at EOS", {"config": (64, 32, 2, 4, 2, 64), "T": 4, "new": 16, "eos_at": 5}),
        Case("SmolLM2, 8 tokens", {"smollm2": True, "new": 8}),
        Case("small Llama, 40 tokens", {"config": (96, 32, 2, 4, 1, 64), "T": 9, "new": 40}, hidden=True),
        Case("a batch of 3 with EOS", {"config": (64, 32, 2, 4, 2, 64), "B": 3, "T": 3, "new": 20, "eos_at": 6},
             hidden=True),
        Case("SmolLM2, 64 tokens", {"smollm2": True, "new": 64, "uncached": False}, hidden=True),
    ),
    library=("generate", "GenerationMixin"),
    reference_impl="utils.decoding:generate",
)

# --------------------------------------------------------------------------- logits processors


def logits_inputs(params, rng):
    B, V = params["shape"]
    logits = params.get("scale", 2.0) * rng.standard_normal((B, V))
    if params.get("ties"):
        logits = np.round(logits * 2) / 2                     # many equal values: ties at the boundary
    if params.get("masked"):
        logits[rng.random((B, V)) < 0.2] = -np.inf            # already filtered by an earlier processor
        logits[np.arange(B), rng.integers(V, size=B)] = 1.0   # every row keeps a finite logit
    inputs = {"logits": logits.astype(np.float32)}
    for key in ("k", "p", "min_p", "penalty"):
        if key in params:
            inputs[key] = np.asarray(params[key])
    if "T" in params:
        inputs["input_ids"] = rng.integers(0, V, size=(B, params["T"])).astype(np.int64)
    if "p" in params:   # keep every cumulative probability clear of p, so float rounding cannot decide a token
        for _ in range(1000):
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            before = np.cumsum(-np.sort(-probs, -1), -1) - -np.sort(-probs, -1)
            if np.abs(before - params["p"]).min() > 1e-3 and np.abs(np.diff(np.sort(probs, -1), axis=-1)).min() > 0:
                break
            logits = params.get("scale", 2.0) * rng.standard_normal((B, V))
        inputs["logits"] = logits.astype(np.float32)
    return inputs


def call_filter(fn, inputs):
    """Top-k, top-p and min-p: ``fn(logits, k | p | min_p)``, whichever of the three the case carries."""
    import torch

    logits = torch.tensor(inputs["logits"])
    original = logits.clone()
    argument = int(inputs["k"]) if "k" in inputs else float(inputs["p"] if "p" in inputs else inputs["min_p"])
    out = fn(logits, argument)
    if not torch.equal(logits, original):
        raise ValueError("the logits were changed in place: return a new tensor (masked_fill, not masked_fill_)")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"return the filtered logits as a tensor (B, V), got {type(out).__name__}")
    removed = out == float("-inf")                                   # exactly -inf: -1e9 or NaN is not removed
    return {"removed": removed, "logits": out.masked_fill(removed, 0.0)}


def call_penalty(fn, inputs):
    import torch

    logits = torch.tensor(inputs["logits"])
    original = logits.clone()
    out = fn(logits, torch.tensor(inputs["input_ids"]), float(inputs["penalty"]))
    if not torch.equal(logits, original):
        raise ValueError("the logits were changed in place: return a new tensor")
    return {"logits": out}


TOP_K = Exercise(
    id="generation.top_k",
    callable="top_k_filter",
    points=2,
    summary="keep each row's k largest logits (and ties with the k-th), -inf elsewhere",
    make_inputs=logits_inputs,
    call=call_filter,
    atol=0.0,
    rtol=0.0,
    cases=(
        Case("k = 3 of 10", {"shape": (2, 10), "k": 3}),
        Case("ties at the k-th value", {"shape": (4, 12), "k": 4, "ties": True}),
        Case("k = 1 (greedy)", {"shape": (3, 50), "k": 1}, hidden=True),
        Case("k = 40 of 1000, ties", {"shape": (2, 1000), "k": 40, "ties": True}, hidden=True),
    ),
    library=("TopKLogitsWarper",),
    reference_impl="utils.decoding:top_k_filter",
)

TOP_P = Exercise(
    id="generation.top_p",
    callable="top_p_filter",
    points=3,
    summary="nucleus: keep the most probable tokens until their probability reaches p (at least one), -inf elsewhere",
    make_inputs=logits_inputs,
    call=call_filter,
    atol=0.0,
    rtol=0.0,
    cases=(
        Case("p = 0.9 of 10 tokens", {"shape": (3, 10), "p": 0.9}),
        Case("p = 0.5, peaked", {"shape": (4, 20), "p": 0.5, "scale": 3.0}),
        Case("p = 0.95, 500 tokens", {"shape": (2, 500), "p": 0.95}, hidden=True),
        Case("p = 0.05 (only the top token)", {"shape": (3, 30), "p": 0.05, "scale": 0.5}, hidden=True),
    ),
    library=("TopPLogitsWarper",),
    reference_impl="utils.decoding:top_p_filter",
)

MIN_P = Exercise(
    id="generation.min_p",
    callable="min_p_filter",
    points=2,
    summary="keep tokens with probability >= min_p * (the top token's probability), -inf elsewhere",
    make_inputs=logits_inputs,
    call=call_filter,
    atol=0.0,
    rtol=0.0,
    cases=(
        Case("min_p = 0.1", {"shape": (3, 12), "min_p": 0.1}),
        Case("min_p = 0.3, some tokens already -inf", {"shape": (4, 16), "min_p": 0.3, "masked": True}),
        Case("min_p = 0.05, 800 tokens", {"shape": (2, 800), "min_p": 0.05, "scale": 3.0}, hidden=True),
    ),
    library=("MinPLogitsWarper",),
    reference_impl="utils.decoding:min_p_filter",
)

REPETITION = Exercise(
    id="generation.repetition_penalty",
    callable="repetition_penalty",
    points=2,
    summary="tokens already in input_ids: positive logits divided by the penalty, negative ones multiplied",
    make_inputs=logits_inputs,
    call=call_penalty,
    atol=1e-6,
    rtol=1e-6,
    cases=(
        Case("penalty 1.3", {"shape": (2, 12), "T": 6, "penalty": 1.3}),
        Case("repeated ids, penalty 2", {"shape": (3, 8), "T": 20, "penalty": 2.0}),
        Case("penalty 0.8 (a bonus)", {"shape": (2, 40), "T": 30, "penalty": 0.8}, hidden=True),
    ),
    library=("RepetitionPenaltyLogitsProcessor",),
    reference_impl="utils.decoding:repetition_penalty",
)

# --------------------------------------------------------------------------- generation.sample


def sample_inputs(params, rng):
    R, V = params["shape"]
    logits = params.get("scale", 1.5) * rng.standard_normal((R, V))
    if params.get("masked"):
        for row in range(R):
            logits[row, rng.choice(V, size=V // 3, replace=False)] = -np.inf
    return {"logits": logits.astype(np.float32), "temperature": np.asarray(float(params.get("temperature", 1.0))),
            "draws": np.asarray(params.get("draws", 4000)), "seed": np.asarray(int(rng.integers(1 << 30)))}


def call_sample(fn, inputs):
    import torch

    logits = torch.tensor(inputs["logits"])                          # (R, V): R distributions
    N, T, seed = int(inputs["draws"]), float(inputs["temperature"]), int(inputs["seed"])
    batch = logits.repeat_interleave(N, dim=0)                       # (R * N, V): each row N times
    original = batch.clone()

    def draw(s):
        out = fn(batch, torch.Generator().manual_seed(s), temperature=T)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"sample must return a LongTensor (B,), got {type(out).__name__}")
        return out

    tokens = draw(seed)
    return {"tokens": tokens.reshape(logits.shape[0], N) if tokens.numel() == batch.shape[0] else tokens,
            "same_seed_same_tokens": bool(torch.equal(draw(seed), tokens)),
            "other_seed_other_tokens": bool(not torch.equal(draw(seed + 1), tokens)),
            "input_untouched": bool(torch.equal(batch, original))}


SAMPLE = Exercise(
    id="generation.sample",
    callable="sample",
    points=3,
    summary="one token per row from softmax(logits / temperature) with the generator; temperature 0 is the argmax",
    make_inputs=sample_inputs,
    call=call_sample,
    cases=(
        Case("temperature 1, 6 tokens", {"shape": (2, 6)}),
        Case("temperature 0.5, some -inf", {"shape": (3, 12), "temperature": 0.5, "masked": True}),
        Case("temperature 0 is greedy", {"shape": (3, 20), "temperature": 0.0, "draws": 50}),
        Case("temperature 2, 30 tokens", {"shape": (2, 30), "temperature": 2.0, "draws": 6000}, hidden=True),
        Case("temperature 0.7, masked, 5 rows", {"shape": (5, 9), "temperature": 0.7, "masked": True}, hidden=True),
    ),
    reference_impl="utils.decoding:sample",
)

# --------------------------------------------------------------------------- generation.beam_search


def beam_inputs(params, rng):
    inputs = generate_inputs({**params, "uncached": False}, rng)
    inputs.update(num_beams=np.asarray(params["beams"]), length_penalty=np.asarray(float(params.get("lp", 1.0))))
    return inputs


def call_beam(fn, inputs):
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    V, d, L, H, Hkv, ff = (int(v) for v in inputs["config"])
    if V == 0:
        from utils.generation import smollm2_hf

        llama = smollm2_hf()[1]
    else:                                           # a small Llama with the case's random weights (not trained)
        config = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ff, num_hidden_layers=L,
                             num_attention_heads=H, num_key_value_heads=Hkv, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                             rope_parameters={"rope_type": "default", "rope_theta": float(inputs["theta"])})
        llama = LlamaForCausalLM(config).eval()
        state = {k[2:]: torch.tensor(v) for k, v in inputs.items() if k.startswith("w.")}
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        llama.load_state_dict(state, strict=True)

    class Model:
        """The course's model interface around transformers' Llama."""

        def new_cache(self):
            return DynamicCache()

        def __call__(self, input_ids, cache=None):
            with torch.no_grad():
                return llama(input_ids=input_ids, cache=cache, use_cache=cache is not None).logits

    eos = int(inputs["eos"]) if int(inputs["eos"]) >= 0 else None
    tokens = fn(Model(), torch.tensor(inputs["input_ids"]), int(inputs["num_beams"]), int(inputs["max_new_tokens"]),
                length_penalty=float(inputs["length_penalty"]), eos_token_id=eos)
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"beam_search must return a LongTensor (1, T + n), got {type(tokens).__name__}")
    return {"tokens": tokens}


BEAM_SEARCH = Exercise(
    id="generation.beam_search",
    callable="beam_search",
    points=3,
    summary="keep the num_beams best partial sequences; 2 * num_beams candidates; finished hypotheses length-normalised",
    make_inputs=beam_inputs,
    call=call_beam,
    cases=(
        Case("3 beams, no EOS", {"config": (64, 32, 2, 4, 2, 64), "T": 5, "new": 8, "beams": 3}),
        Case("4 beams, EOS, length_penalty 1", {"config": (64, 32, 2, 4, 2, 64), "T": 4, "new": 12, "beams": 4,
                                                "eos_at": 2}),
        Case("2 beams, EOS, length_penalty 2", {"config": (80, 48, 2, 6, 3, 96), "T": 6, "new": 10, "beams": 2,
                                                "eos_at": 1, "lp": 2.0}),
        Case("5 beams, EOS, length_penalty 0", {"config": (96, 32, 3, 4, 2, 64), "T": 3, "new": 14, "beams": 5,
                                                "eos_at": 3, "lp": 0.0}, hidden=True),
        Case("3 beams, EOS, length_penalty -1", {"config": (64, 32, 2, 4, 1, 64), "T": 7, "new": 9, "beams": 3,
                                                 "eos_at": 2, "lp": -1.0}, hidden=True),
    ),
    library=("generate", "GenerationMixin", "BeamSearchScorer"),
    reference_impl="utils.decoding:beam_search",
)

# --------------------------------------------------------------------------- generation.speculative


def speculative_inputs(params, rng):
    inputs = generate_inputs({**params, "uncached": False}, rng)
    inputs.update(k=np.asarray(params["k"]), draft_layers=np.asarray(params["draft_layers"]))  # 0: the model itself
    return inputs


def call_speculative(fn, inputs):
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    V, d, L, H, Hkv, ff = (int(v) for v in inputs["config"])
    if V == 0:
        from utils.generation import smollm2_hf

        llama = smollm2_hf()[1]
        config, state = llama.config, dict(llama.state_dict())
    else:                                           # a small Llama with the case's random weights (not trained)
        config = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ff, num_hidden_layers=L,
                             num_attention_heads=H, num_key_value_heads=Hkv, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                             rope_parameters={"rope_type": "default", "rope_theta": float(inputs["theta"])})
        llama = LlamaForCausalLM(config).eval()
        state = {k[2:]: torch.tensor(v) for k, v in inputs.items() if k.startswith("w.")}
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        llama.load_state_dict(state, strict=True)
    n_draft = int(inputs["draft_layers"])
    if n_draft:                                     # early exit: the first layers, the final norm and the head
        draft_config = type(config).from_dict(config.to_dict())
        draft_config.num_hidden_layers = n_draft
        early = LlamaForCausalLM(draft_config).eval()
        keep = {k: v for k, v in state.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < n_draft}
        early.load_state_dict(keep, strict=False, assign=True)
        early.tie_weights()
    else:
        early = llama

    class Cache(DynamicCache):
        def crop(self, length):                     # the course's crop(length) keeps `length` positions
            super().crop(min(int(length) - self.get_seq_length(), 0))

    class Model:
        """The course's model interface around transformers' Llama; it counts its calls."""

        def __init__(self, llama):
            self.llama, self.calls = llama, 0

        def new_cache(self):
            return Cache()

        def __call__(self, input_ids, cache=None):
            self.calls += 1
            if self.calls > 8 * int(inputs["max_new_tokens"]) + 16:
                raise RuntimeError("the model was called far more often than max_new_tokens times: does the loop stop?")
            with torch.no_grad():
                return self.llama(input_ids=input_ids, cache=cache, use_cache=cache is not None).logits

    target, draft = Model(llama), Model(early)
    eos = int(inputs["eos"]) if int(inputs["eos"]) >= 0 else None
    result = fn(target, draft, torch.tensor(inputs["input_ids"]), int(inputs["max_new_tokens"]), k=int(inputs["k"]),
                eos_token_id=eos)
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"speculative_generate must return (ids, acceptance_rate), got {type(result).__name__}")
    return {"tokens": result[0], "acceptance_rate": float(result[1]), "target_calls": target.calls,
            "draft_calls": draft.calls}


SPECULATIVE = Exercise(
    id="generation.speculative",
    callable="speculative_generate",
    points=3,
    summary="the draft proposes k tokens, the model verifies them in one call; output identical to greedy decoding",
    make_inputs=speculative_inputs,
    call=call_speculative,
    cases=(
        Case("1-layer draft of 3, k = 3", {"config": (64, 32, 3, 4, 2, 64), "T": 5, "new": 16, "k": 3,
                                           "draft_layers": 1}),
        Case("a perfect draft (the model itself), k = 4", {"config": (64, 32, 2, 4, 2, 64), "T": 4, "new": 15,
                                                           "k": 4, "draft_layers": 0}),
        Case("EOS, k = 2", {"config": (64, 32, 2, 4, 2, 64), "T": 4, "new": 20, "k": 2, "draft_layers": 1,
                            "eos_at": 7}),
        Case("2-layer draft of 4, k = 5", {"config": (96, 48, 4, 6, 2, 96), "T": 6, "new": 30, "k": 5,
                                           "draft_layers": 2}, hidden=True),
        Case("a perfect draft, k = 3, EOS", {"config": (64, 32, 2, 4, 1, 64), "T": 3, "new": 25, "k": 3,
                                             "draft_layers": 0, "eos_at": 9}, hidden=True),
    ),
    library=("assistant_model", "prompt_lookup_num_tokens"),
    reference_impl="utils.decoding:speculative_generate",
)

# --------------------------------------------------------------------------- generation.choice_processor


def choice_inputs(params, rng):
    V, P = params["V"], params["P"]
    lengths = params["lengths"]
    choices = np.full((len(lengths), max(lengths)), -1, dtype=np.int64)
    for i, n in enumerate(lengths):
        choices[i, :n] = rng.choice(np.arange(1, V), size=n, replace=False)
    for i, j, n in params.get("shared", ()):   # choice i starts with the first n tokens of choice j
        choices[i, :n] = choices[j, :n]
    return {"choices": choices, "prompt": rng.integers(0, V, size=P).astype(np.int64),
            "scores": rng.standard_normal((64, V)).astype(np.float32), "eos": np.asarray(0)}


def call_choice(fn, inputs):
    import torch

    choices = [[int(t) for t in row if t >= 0] for row in inputs["choices"]]
    prompt = [int(t) for t in inputs["prompt"]]
    processor = fn(choices, len(prompt), int(inputs["eos"]))
    prefixes = sorted({tuple(c[:i]) for c in choices for i in range(len(c) + 1)})   # every prefix, in order
    scores = torch.tensor(inputs["scores"])
    out = []
    for i, prefix in enumerate(prefixes):
        row = scores[i % len(scores)][None].clone()                                # (1, V)
        out.append(processor(torch.tensor([prompt + list(prefix)]), row)[0])
    scores = torch.stack(out)                                                      # (n_prefixes, V)
    removed = scores == float("-inf")                                              # exactly -inf
    return {"removed": removed, "scores": scores.masked_fill(removed, 0.0)}


CHOICE = Exercise(
    id="generation.choice_processor",
    callable="ChoiceLogitsProcessor",
    points=2,
    summary="a LogitsProcessor: only tokens that continue one of the choices (a trie), EOS after a whole choice",
    make_inputs=choice_inputs,
    call=call_choice,
    atol=0.0,
    rtol=0.0,
    cases=(
        Case("three single-token choices", {"V": 20, "P": 4, "lengths": (1, 1, 1)}),
        Case("multi-token choices, one a prefix of another", {"V": 30, "P": 3, "lengths": (2, 3, 3),
                                                               "shared": ((0, 1, 2),)}),
        Case("shared first tokens", {"V": 50, "P": 6, "lengths": (4, 4, 2, 5), "shared": ((1, 0, 2), (2, 3, 2))},
             hidden=True),
    ),
    library=("PrefixConstrainedLogitsProcessor",),
    reference_impl="utils.decoding:ChoiceLogitsProcessor",
)

ASSIGNMENT = Assignment(
    notebook="05_generation",
    title="Generation and decoding",
    exercises=(RMS_NORM, APPLY_ROPE, REPEAT_KV, KV_CACHE, GENERATE, TOP_K, TOP_P, MIN_P, REPETITION, SAMPLE,
               BEAM_SEARCH, SPECULATIVE, CHOICE),
    references=("utils.llama", "utils.decoding"),
)
