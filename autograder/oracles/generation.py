"""Notebook 05, trusted side: references from ``transformers`` and the known mistakes of generation.

Oracles: ``LlamaRMSNorm``, ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``, ``repeat_kv`` (all
from ``transformers.models.llama.modeling_llama``), ``DynamicCache``,
``LlamaForCausalLM.generate(do_sample=False)`` and the logits processors ``TopKLogitsWarper``,
``TopPLogitsWarper``, ``MinPLogitsWarper``, ``RepetitionPenaltyLogitsProcessor``. ``sample`` is
judged: exact invariants on every draw, then a chi-square test of the draws of each distribution
against softmax(logits / temperature) (``TemperatureLogitsWarper``) at significance ALPHA (shared
among the rows of a case), so a correct implementation fails a case with probability below one in
a million.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..compare import expect_array
from ..manifests.generation import (APPLY_ROPE, BEAM_SEARCH, CHOICE, GENERATE, KV_CACHE, MIN_P, REPEAT_KV, REPETITION, RMS_NORM,
                                    SAMPLE, SPECULATIVE, TOP_K, TOP_P, tiny_llama)
from ..spec import Detector, Oracle
from .common import tensor as _t

ALPHA = 1e-6


# --------------------------------------------------------------------------- rms_norm


def rms_reference(inputs):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = _t(inputs, "x")
    norm = LlamaRMSNorm(x.shape[-1], eps=float(inputs["eps"]))
    with torch.no_grad():
        norm.weight.copy_(_t(inputs, "weight"))
        return {"y": norm(x)}


def _rms_variant(kind):
    def produce(inputs):
        x, w, eps = _t(inputs, "x"), _t(inputs, "weight"), float(inputs["eps"])
        if kind == "mean subtracted":
            return {"y": F.layer_norm(x, x.shape[-1:], eps=eps) * w}
        if kind == "eps outside":
            return {"y": x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w}
        if kind == "no weight":
            return {"y": x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)}
        if kind == "l2 norm":
            return {"y": x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w}
        raise ValueError(kind)

    return produce


# --------------------------------------------------------------------------- apply_rope


def _hf_rope(x, positions, theta):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    B, H, T, d = x.shape
    config = LlamaConfig(hidden_size=H * d, num_attention_heads=H, head_dim=d,
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    position_ids = positions if positions.dim() == 2 else positions[None].expand(B, T)    # (B, T)
    cos, sin = LlamaRotaryEmbedding(config)(x, position_ids)                              # (B, T, d) each
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def rope_reference(inputs):
    return {"y": _hf_rope(_t(inputs, "x"), _t(inputs, "positions"), float(inputs["theta"]))}


def _rope_variant(kind):
    def produce(inputs):
        x, positions, theta = _t(inputs, "x"), _t(inputs, "positions"), float(inputs["theta"])
        if kind == "theta ignored":
            return {"y": _hf_rope(x, positions, 10000.0)}
        if kind == "positions ignored":
            return {"y": _hf_rope(x, torch.arange(x.shape[2]), theta)}
        if kind == "backwards":
            return {"y": _hf_rope(x, -positions, theta)}
        if kind == "interleaved":     # pairs (x_0, x_1), (x_2, x_3), ...: the layout of the RoFormer paper
            B, H, T, d = x.shape
            pairs = x.view(B, H, T, d // 2, 2)
            rotated = _hf_rope(torch.cat([pairs[..., 0], pairs[..., 1]], -1), positions, theta)   # halves layout
            return {"y": torch.stack([rotated[..., : d // 2], rotated[..., d // 2:]], -1).reshape(B, H, T, d)}
        raise ValueError(kind)

    return produce


# --------------------------------------------------------------------------- repeat_kv


def repeat_reference(inputs):
    from transformers.models.llama.modeling_llama import repeat_kv

    return {"y": repeat_kv(_t(inputs, "x"), int(inputs["n_rep"]))}


# --------------------------------------------------------------------------- kv_cache


class _WrongCache:
    """A KV cache with one known mistake (``kind``), to recognise it in a learner's answer."""

    def __init__(self, kind):
        self.kind, self.keys, self.values, self.calls = kind, {}, {}, {}

    def update(self, k, v, layer):
        slot = 0 if self.kind == "one list" else layer
        if slot in self.keys:
            self.keys[slot] = torch.cat([self.keys[slot], k], -2)
            self.values[slot] = torch.cat([self.values[slot], v], -2)
        else:
            self.keys[slot], self.values[slot] = k, v
        self.calls[layer] = self.calls.get(layer, 0) + 1
        if self.kind == "returns new":
            return k, v
        return self.keys[slot], self.values[slot]

    def get_seq_length(self, layer=0):
        if self.kind == "counts calls":
            return self.calls.get(layer, 0)
        slot = 0 if self.kind == "one list" else layer
        return self.keys[slot].shape[-2] if slot in self.keys else 0

    def crop(self, length):
        if self.kind == "crop ignored":
            return
        for slot in self.keys:
            self.keys[slot], self.values[slot] = self.keys[slot][..., :length, :], self.values[slot][..., :length, :]


def _run_cache(inputs, make):
    from ..manifests.generation import call_cache

    return call_cache(make, inputs)


def cache_reference(inputs):
    """transformers' DynamicCache; its ``crop(-n)`` removes n positions, ours ``crop(length)`` keeps ``length``."""
    from transformers import DynamicCache

    class Reference(DynamicCache):
        def crop(self, max_length):
            super().crop(min(max_length - self.get_seq_length(), 0))

    return _run_cache(inputs, Reference)


# --------------------------------------------------------------------------- generate


@functools.lru_cache(maxsize=4)
def _smollm2():
    from utils.generation import smollm2_hf

    return smollm2_hf()[1]


def _model(inputs):
    return _smollm2() if int(inputs["config"][0]) == 0 else tiny_llama(inputs)


def _hf_generate(model, ids, n, eos):
    """transformers' greedy generate; finished rows are filled with EOS (its pad token here)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=eos if eos is not None else 0, bos_token_id=None)
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)


def _fed(T0, generated, cached):
    return torch.tensor([T0] + [1 if cached else T0 + i for i in range(1, generated)], dtype=torch.long)


def generate_reference(inputs):
    ids = _t(inputs, "input_ids")
    eos = int(inputs["eos"]) if int(inputs["eos"]) >= 0 else None
    tokens = _hf_generate(_model(inputs), ids, int(inputs["max_new_tokens"]), eos)
    generated, T0 = tokens.shape[1] - ids.shape[1], ids.shape[1]
    out = {"tokens": tokens, "fed": _fed(T0, generated, True)}
    if int(inputs["uncached"]):
        out.update(tokens_uncached=tokens, fed_uncached=_fed(T0, generated, False))
    return out


def _simulate(inputs, kind):
    """Greedy decoding with a known mistake, on the case's model (transformers' Llama, DynamicCache)."""
    from transformers import DynamicCache

    model = _model(inputs)
    ids0 = _t(inputs, "input_ids")
    n = int(inputs["max_new_tokens"])
    eos = int(inputs["eos"]) if int(inputs["eos"]) >= 0 else None
    out = {}
    for name, use_cache in (("", True), ("_uncached", False)):
        if name and not int(inputs["uncached"]):
            continue
        cached = use_cache and kind != "cache never used"
        cache = DynamicCache() if cached else None
        ids, feed, fed = ids0, ids0, []
        done = torch.zeros(ids0.shape[0], dtype=torch.bool)
        for _ in range(n):
            fed.append(feed.shape[1])
            with torch.no_grad():
                logits = model(input_ids=feed, cache=cache, use_cache=cache is not None).logits
            token = logits[:, 0 if kind == "first position" else -1].argmax(-1)
            if eos is not None and kind != "EOS ignored":
                token = torch.where(done, torch.full_like(token, eos), token)
                done |= token == eos
            ids = torch.cat([ids, token[:, None]], 1)
            feed = ids if (not cached or kind == "whole sequence into the cache") else token[:, None]
            if done.all():
                break
        out["tokens" + name] = ids
        out["fed" + name] = torch.tensor(fed, dtype=torch.long)
    return out


# --------------------------------------------------------------------------- logits processors


def _split(out):
    """What the calls of the filters return: where the logits are exactly -inf, and the others (0 there)."""
    removed = out == float("-inf")
    return {"removed": removed, "logits": out.masked_fill(removed, 0.0)}


def _processor(make, split=True):
    def produce(inputs):
        logits = _t(inputs, "logits")
        ids = _t(inputs, "input_ids") if "input_ids" in inputs else torch.zeros(logits.shape[0], 1, dtype=torch.long)
        out = make(inputs)(ids, logits.clone())
        return _split(out) if split else {"logits": out}

    return produce


def _top_k_hf(inputs):
    from transformers import TopKLogitsWarper

    return TopKLogitsWarper(top_k=int(inputs["k"]))


def _top_p_hf(inputs):
    from transformers import TopPLogitsWarper

    return TopPLogitsWarper(top_p=float(inputs["p"]))


def _min_p_hf(inputs):
    from transformers import MinPLogitsWarper

    return MinPLogitsWarper(min_p=float(inputs["min_p"]))


def _penalty_hf(inputs):
    from transformers import RepetitionPenaltyLogitsProcessor

    return RepetitionPenaltyLogitsProcessor(penalty=float(inputs["penalty"]))


def _top_k_variant(kind):
    def produce(inputs):
        logits, k = _t(inputs, "logits"), int(inputs["k"])
        if kind == "ties dropped":
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k, -1).indices, True)
            return _split(logits.masked_fill(~keep, float("-inf")))
        kth = torch.topk(logits, k, -1).values[..., -1:]
        return _split(logits.masked_fill(logits <= kth, float("-inf")))            # "k-th removed"

    return produce


def _top_p_variant(kind):
    def produce(inputs):
        logits, p = _t(inputs, "logits"), float(inputs["p"])
        probs = logits.softmax(-1)
        sorted_probs, order = probs.sort(-1, descending=True)
        if kind == "crossing token dropped":
            remove = sorted_probs.cumsum(-1) > p
        else:                                   # "not sorted": cumulative sum in vocabulary order
            remove = probs.cumsum(-1) - probs >= p
            return _split(logits.masked_fill(remove, float("-inf")))
        return _split(logits.masked_fill(remove.scatter(-1, order, remove), float("-inf")))

    return produce


def _min_p_variant(kind):
    def produce(inputs):
        logits, min_p = _t(inputs, "logits"), float(inputs["min_p"])
        probs = logits.softmax(-1)
        if kind == "absolute":
            remove = probs < min_p
            remove[torch.arange(len(probs)), probs.argmax(-1)] = False
        else:                                   # "logits": the threshold on logits instead of probabilities
            remove = logits < min_p * logits.amax(-1, keepdim=True)
        return _split(logits.masked_fill(remove, float("-inf")))

    return produce


def _penalty_variant(kind):
    def produce(inputs):
        logits, ids, penalty = _t(inputs, "logits"), _t(inputs, "input_ids"), float(inputs["penalty"])
        if kind == "always divides":
            seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, True)
            return {"logits": torch.where(seen, logits / penalty, logits)}
        out = logits.clone()                    # "once per occurrence"
        for b in range(ids.shape[0]):
            for token in ids[b].tolist():
                value = out[b, token]
                out[b, token] = value * penalty if value < 0 else value / penalty
        return {"logits": out}

    return produce


# --------------------------------------------------------------------------- sample


def _chi2_pvalue(counts, probs):
    """Chi-square goodness of fit of ``counts`` to ``probs``, categories with expected count < 5 pooled."""
    from scipy.stats import chi2

    n = counts.sum()
    expected = probs * n
    order = np.argsort(expected)
    pooled_obs, pooled_exp, acc_o, acc_e = [], [], 0.0, 0.0
    for i in order:
        acc_o += counts[i]
        acc_e += expected[i]
        if acc_e >= 5:
            pooled_obs.append(acc_o)
            pooled_exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0 and pooled_exp:
        pooled_obs[-1] += acc_o
        pooled_exp[-1] += acc_e
    if len(pooled_exp) < 2:
        return 1.0
    obs, exp = np.asarray(pooled_obs), np.asarray(pooled_exp)
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(chi2.sf(stat, len(exp) - 1))


def _softmax(row, temperature):
    """The distribution ``generate(do_sample=True, temperature=...)`` samples from: transformers'
    ``TemperatureLogitsWarper``, then a softmax (in float64)."""
    from transformers import TemperatureLogitsWarper

    z = TemperatureLogitsWarper(temperature)(None, torch.tensor(row[None], dtype=torch.float64))[0].numpy()
    z = z - z[np.isfinite(z)].max()
    p = np.exp(z)
    return p / p.sum()


def judge_sample(inputs, got):
    logits = np.asarray(inputs["logits"], dtype=np.float64)
    R, V = logits.shape
    N, T = int(inputs["draws"]), float(inputs["temperature"])
    reason = expect_array(got, "tokens", "int", (R, N))
    if reason:
        return reason, "sample returns one token id per row of logits: a LongTensor of shape (B,)"
    for key in ("same_seed_same_tokens", "other_seed_other_tokens", "input_untouched"):
        reason = expect_array(got, key, "bool", ())
        if reason:
            return reason, None
    tokens = got["tokens"]
    if not got["input_untouched"]:
        return "the logits were changed in place", "divide into a new tensor: logits / temperature, not logits /= temperature"
    if ((tokens < 0) | (tokens >= V)).any():
        return "some tokens are not ids in [0, V)", None
    if T == 0:
        expected = np.broadcast_to(logits.argmax(-1)[:, None], (R, N))
        if not np.array_equal(tokens, expected):
            return "with temperature 0 the tokens are not the argmax", "temperature 0 means greedy: return logits.argmax(-1)"
        return None, None
    if not got["same_seed_same_tokens"]:
        return ("two calls with generators seeded alike drew different tokens",
                "draw with the generator you are given: torch.multinomial(probs, 1, generator=generator)")
    banned = ~np.isfinite(logits)
    if np.take_along_axis(banned, tokens, axis=1).any():
        return "a token whose logit is -inf was drawn", "softmax gives -inf logits probability 0: never draw them"
    if (tokens == logits.argmax(-1)[:, None]).all():
        return (f"all {N} draws of every row are the most likely token",
                "that is greedy decoding: draw from the distribution, torch.multinomial(softmax(logits / T), 1)")
    if not got["other_seed_other_tokens"]:
        return ("generators with different seeds drew the same tokens",
                "draw with the generator you are given: torch.multinomial(probs, 1, generator=generator)")
    counts = np.stack([np.bincount(tokens[r], minlength=V) for r in range(R)])          # (R, V)
    alpha = ALPHA / R
    for r in range(R):
        p = _chi2_pvalue(counts[r], _softmax(logits[r], T))
        if p < alpha:
            hint = None
            if T != 1 and _chi2_pvalue(counts[r], _softmax(logits[r], 1.0)) >= alpha:
                hint = "the draws follow softmax(logits): divide the logits by the temperature first"
            elif T != 1 and _chi2_pvalue(counts[r], _softmax(logits[r], 1 / T)) >= alpha:
                hint = "the logits were multiplied by the temperature: divide them, softmax(logits / temperature)"
            elif R > 1 and _chi2_pvalue(counts[r], _softmax(logits[0], T)) >= alpha:
                hint = "every row follows the first row's distribution: draw each row from its own softmax"
            return (f"row {r}: the {N} draws do not follow softmax(logits / temperature) "
                    f"(chi-square p = {p:.2g} < {alpha:.2g})", hint)
    return None, None


# --------------------------------------------------------------------------- beam search


def _eos(inputs):
    return int(inputs["eos"]) if int(inputs["eos"]) >= 0 else None


def _hf_beams(inputs, length_penalty=None):
    from transformers import GenerationConfig

    ids, eos = _t(inputs, "input_ids"), _eos(inputs)
    config = GenerationConfig(max_new_tokens=int(inputs["max_new_tokens"]), do_sample=False,
                              num_beams=int(inputs["num_beams"]), early_stopping=True,
                              length_penalty=float(inputs["length_penalty"]) if length_penalty is None else length_penalty,
                              eos_token_id=eos, pad_token_id=eos if eos is not None else 0, bos_token_id=None)
    with torch.no_grad():
        return {"tokens": _model(inputs).generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)}


def _beams_variant(kind):
    def produce(inputs):
        if kind == "greedy":
            ids = _t(inputs, "input_ids")
            return {"tokens": _hf_generate(_model(inputs), ids, int(inputs["max_new_tokens"]), _eos(inputs))}
        if kind == "no length normalisation":
            return _hf_beams(inputs, length_penalty=0.0)
        # "num_beams candidates": only num_beams continuations ranked, so an EOS among them costs a running beam
        model, beams = _model(inputs), _t(inputs, "input_ids")
        num_beams, n, lp, eos = (int(inputs["num_beams"]), int(inputs["max_new_tokens"]),
                                 float(inputs["length_penalty"]), _eos(inputs))
        scores, finished = torch.zeros(1), []
        for step in range(1, n + 1):
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=beams).logits[:, -1].float(), -1)
            V = logprobs.shape[-1]
            top_scores, top_index = (scores[:, None] + logprobs).flatten().topk(num_beams)
            next_beams, next_scores = [], []
            for score, index in zip(top_scores.tolist(), top_index.tolist()):
                beam, token = divmod(index, V)
                sequence = torch.cat([beams[beam], torch.tensor([token])])
                if (eos is not None and token == eos) or step == n:
                    finished.append((score / step ** lp, sequence))
                else:
                    next_beams.append(sequence)
                    next_scores.append(score)
            finished = sorted(finished, key=lambda item: -item[0])[:num_beams]
            if len(finished) == num_beams or not next_beams:
                break
            beams, scores = torch.stack(next_beams), torch.tensor(next_scores)
        return {"tokens": finished[0][1][None]}

    return produce


# --------------------------------------------------------------------------- speculative decoding


def judge_speculative(inputs, got):
    ids = _t(inputs, "input_ids")
    n, k, eos = int(inputs["max_new_tokens"]), int(inputs["k"]), _eos(inputs)
    reason = expect_array(got, "tokens", "int")
    if reason:
        return reason, "speculative_generate returns (ids, acceptance_rate): ids a LongTensor (1, T + n)"
    for key, kind in (("acceptance_rate", "float"), ("target_calls", "int"), ("draft_calls", "int")):
        reason = expect_array(got, key, kind, ())
        if reason:
            return reason, None
    expected = _hf_generate(_model(inputs), ids, n, eos).numpy()
    tokens = got["tokens"]
    if tokens.shape != expected.shape or not np.array_equal(tokens, expected):
        hint = None
        if tokens.shape[:1] == expected.shape[:1] and tokens.shape[-1] > expected.shape[-1]:
            hint = "more tokens than greedy decoding: stop at max_new_tokens (and after EOS), even inside a round"
        else:
            hint = ("speculative decoding must give exactly the model's greedy tokens: accept proposal i only if it "
                    "equals the model's argmax at the position before it, then append the model's own next token")
        return (f"the tokens differ from greedy decoding with the model (LlamaForCausalLM.generate): "
                f"shape {tokens.shape} vs {expected.shape}", hint)
    rate = float(got["acceptance_rate"])
    if not 0.0 <= rate <= 1.0:
        return f"the acceptance rate {rate:.3g} is not in [0, 1]", "acceptance_rate = accepted proposals / proposals made"
    generated = expected.shape[-1] - ids.shape[-1]
    calls = int(got["target_calls"])
    if int(inputs["draft_layers"]) == 0:            # the draft IS the model: every proposal is right
        if rate != 1.0:
            return (f"with the model itself as the draft, the acceptance rate is {rate:.3g}, expected 1",
                    "compare proposal i with the model's choice at the position BEFORE it (logits[:, i - 1] scores "
                    "token i); with a perfect draft every proposal is accepted")
        bound = math.ceil(generated / (k + 1)) + 1
        if calls > bound:
            return (f"the model was called {calls} times for {generated} tokens with a perfect draft (k = {k}); "
                    f"at most {bound} calls are needed", "verify all k proposals in ONE call of the model")
    elif calls > generated + 1:
        return (f"the model was called {calls} times for {generated} tokens: more than plain decoding",
                "verify all k proposals in ONE call of the model, then continue from the accepted text")
    return None, None


# --------------------------------------------------------------------------- choice processor


def _choice_with(allowed_of):
    """The call's outputs when the allowed tokens after each prefix are ``allowed_of(choices, prefix, eos)``,
    applied by transformers' PrefixConstrainedLogitsProcessor (scores kept, -inf elsewhere)."""

    def produce(inputs):
        from transformers import PrefixConstrainedLogitsProcessor

        from ..manifests.generation import call_choice

        choices = [[int(t) for t in row if t >= 0] for row in inputs["choices"]]
        P, eos = len(inputs["prompt"]), int(inputs["eos"])

        def make(choices_, prompt_length, eos_token_id):
            return PrefixConstrainedLogitsProcessor(
                lambda batch_id, ids: allowed_of(choices, ids[P:].tolist(), eos, ids.tolist()), num_beams=1)

        return call_choice(make, inputs)

    return produce


def _allowed(choices, prefix, eos, whole=None):
    n = len(prefix)
    tokens = {c[n] for c in choices if len(c) > n and c[:n] == prefix}
    if any(c == prefix for c in choices) or not tokens:
        tokens.add(eos)
    return sorted(tokens)


def _allowed_no_eos_if_longer(choices, prefix, eos, whole=None):
    n = len(prefix)
    return sorted({c[n] for c in choices if len(c) > n and c[:n] == prefix}) or [eos]


def _allowed_prompt_counted(choices, prefix, eos, whole=None):
    return _allowed(choices, whole, eos)


def _allowed_eos_only_at_end(choices, prefix, eos, whole=None):
    n = len(prefix)
    if any(c == prefix for c in choices):
        return [eos]
    return sorted({c[n] for c in choices if len(c) > n and c[:n] == prefix}) or [eos]


ORACLES = {
    RMS_NORM.id: Oracle(
        reference=rms_reference,
        detectors=(
            Detector("mean subtracted", _rms_variant("mean subtracted"),
                     "the mean was subtracted: that is LayerNorm. RMSNorm only divides by the root mean square, "
                     "x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight"),
            Detector("eps outside the root", _rms_variant("eps outside"),
                     "eps is added to the root: add it to the mean of squares, inside, torch.rsqrt(ms + eps)"),
            Detector("no weight", _rms_variant("no weight"), "the learned scale is missing: multiply by weight"),
            Detector("L2 norm", _rms_variant("l2 norm"),
                     "this divides by the L2 norm (a sum of squares): RMSNorm uses the MEAN of the squares"),
        ),
    ),
    APPLY_ROPE.id: Oracle(
        reference=rope_reference,
        detectors=(
            Detector("interleaved pairs", _rope_variant("interleaved"),
                     "you rotate neighbouring pairs (x_0, x_1), (x_2, x_3), ...; Llama (and transformers) pair x_i "
                     "with x_{i + d/2}: x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1)"),
            Detector("theta ignored", _rope_variant("theta ignored"),
                     "the frequencies use 10000 instead of the theta argument: inv_freq = 1 / theta ** (arange(0, d, 2) / d)"),
            Detector("positions ignored", _rope_variant("positions ignored"),
                     "the angles use 0 ... T-1 instead of `positions`: after a cache, the new token's position is "
                     "the number of cached tokens, not 0"),
            Detector("rotation backwards", _rope_variant("backwards"),
                     "the rotation goes the wrong way: x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1)"),
        ),
    ),
    REPEAT_KV.id: Oracle(
        reference=repeat_reference,
        detectors=(
            Detector("tiled", lambda inputs: {"y": _t(inputs, "x").repeat(1, int(inputs["n_rep"]), 1, 1)},
                     "the heads are tiled (h0, h1, h2, h0, h1, h2, ...); each kv head serves a contiguous group of "
                     "query heads (h0, h0, h0, h1, ...): x[:, :, None].expand(B, H_kv, n_rep, T, d).reshape(...)"),
        ),
    ),
    KV_CACHE.id: Oracle(
        reference=cache_reference,
        detectors=(
            Detector("returns only the new keys", lambda inputs: _run_cache(inputs, lambda: _WrongCache("returns new")),
                     "update must return ALL the layer's keys and values so far (the cached ones and the new), "
                     "for attention to see the whole past"),
            Detector("one list for all layers", lambda inputs: _run_cache(inputs, lambda: _WrongCache("one list")),
                     "the layers share one store: keep a separate key and value tensor for each layer_idx"),
            Detector("length counts calls", lambda inputs: _run_cache(inputs, lambda: _WrongCache("counts calls")),
                     "get_seq_length counts calls of update; it is the number of cached POSITIONS, "
                     "keys[layer_idx].shape[-2]"),
            Detector("crop ignored", lambda inputs: _run_cache(inputs, lambda: _WrongCache("crop ignored")),
                     "crop(length) must drop every position after the first `length`, in every layer"),
        ),
    ),
    GENERATE.id: Oracle(
        reference=generate_reference,
        detectors=(
            Detector("cache never used", lambda inputs: _simulate(inputs, "cache never used"),
                     "with use_cache=True feed the prompt once, then only the new token, with cache = model.new_cache() "
                     "passed to every call: model(token[:, None], cache=cache)"),
            Detector("whole sequence into the cache", lambda inputs: _simulate(inputs, "whole sequence into the cache"),
                     "with a cache, feed only the new token: the cache already holds the keys and values of "
                     "everything before it (feeding the whole sequence stores it twice)"),
            Detector("first position", lambda inputs: _simulate(inputs, "first position"),
                     "the next token comes from the LAST position's logits, logits[:, -1]"),
            Detector("EOS ignored", lambda inputs: _simulate(inputs, "EOS ignored"),
                     "stop when eos_token_id has been generated (and fill finished rows with it)"),
        ),
    ),
    TOP_K.id: Oracle(
        reference=_processor(_top_k_hf),
        detectors=(
            Detector("ties dropped", _top_k_variant("ties dropped"),
                     "exactly k tokens are kept, ties at the k-th value broken arbitrarily; keep every token whose "
                     "logit is >= the k-th largest (logits < kth -> -inf), as transformers does"),
            Detector("k-th removed", _top_k_variant("k-th removed"),
                     "the k-th largest logit itself was removed: remove only logits strictly below it"),
        ),
    ),
    TOP_P.id: Oracle(
        reference=_processor(_top_p_hf),
        detectors=(
            Detector("crossing token dropped", _top_p_variant("crossing token dropped"),
                     "the token that takes the total past p must stay: keep a token when the probability of the "
                     "tokens BEFORE it (in descending order) is below p"),
            Detector("not sorted", _top_p_variant("not sorted"),
                     "the cumulative sum runs in vocabulary order: sort the probabilities in descending order first"),
        ),
    ),
    MIN_P.id: Oracle(
        reference=_processor(_min_p_hf),
        detectors=(
            Detector("absolute threshold", _min_p_variant("absolute"),
                     "min_p is relative: the threshold is min_p times the probability of the most likely token"),
            Detector("threshold on logits", _min_p_variant("logits"),
                     "compare probabilities (softmax of the logits), not the logits themselves"),
        ),
    ),
    REPETITION.id: Oracle(
        reference=_processor(_penalty_hf, split=False),
        detectors=(
            Detector("always divides", _penalty_variant("always divides"),
                     "dividing a NEGATIVE logit by the penalty makes the token more likely: multiply negative "
                     "logits by the penalty, divide positive ones"),
            Detector("once per occurrence", _penalty_variant("once per occurrence"),
                     "a token that occurs several times was penalised several times: apply the penalty once per "
                     "distinct token"),
        ),
    ),
    SAMPLE.id: Oracle(judge=judge_sample),
    BEAM_SEARCH.id: Oracle(
        reference=_hf_beams,
        detectors=(
            Detector("greedy", _beams_variant("greedy"),
                     "this is greedy decoding: keep num_beams partial sequences and rank all their continuations "
                     "by the SUM of log-probabilities"),
            Detector("no length normalisation", _beams_variant("no length normalisation"),
                     "a finished hypothesis is scored sum_logprobs / generated_length ** length_penalty"),
            Detector("num_beams candidates", _beams_variant("num_beams candidates"),
                     "rank the best 2 * num_beams continuations: those ending in EOS (among the first num_beams) "
                     "finish, and num_beams of the others still go on"),
        ),
    ),
    SPECULATIVE.id: Oracle(judge=judge_speculative),
    CHOICE.id: Oracle(
        reference=_choice_with(_allowed),
        detectors=(
            Detector("a whole choice may not go on", _choice_with(_allowed_eos_only_at_end),
                     "when the tokens so far form a whole choice that is also the start of a longer one, both "
                     "EOS and the longer choice's next token are allowed"),
            Detector("prompt counted", _choice_with(_allowed_prompt_counted),
                     "the prompt was read as part of the answer: the choice starts after the prompt, at "
                     "input_ids[row, prompt_length:]"),
            Detector("a whole choice may not end", _choice_with(_allowed_no_eos_if_longer),
                     "when the tokens so far form a whole choice that is also the start of a longer one, both "
                     "EOS and the longer choice's next token are allowed"),
        ),
    ),
}
