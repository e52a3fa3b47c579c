"""Notebook 05's grading, ``utils.llama`` and ``utils.decoding``, without running the notebook.

* ``utils.llama.Llama`` reproduces ``LlamaForCausalLM``'s logits on SmolLM2 (real prompts), with
  and without the cache.
* The solution notebook's functions (and the course's references) pass every case; ``sample``'s
  statistical judge whatever the hidden seed.
* Every known mistake, written here as a wrong implementation, fails with the hint that names it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autograder.capture import run_case
from autograder.compare import diagnose
from autograder.manifests import assignment, exercise
from conftest import solution_code_cells

ASSIGNMENT = assignment("05_generation")
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n",
           "Once upon a time, in a land far away, there lived a dragon who loved to read books about"]


@pytest.fixture(scope="module")
def smollm2():
    from utils.generation import smollm2_hf

    return smollm2_hf()


@pytest.fixture(scope="module")
def solution():
    """The notebook's parameters, imports and solution cells, executed (SmolLM2 is loaded once, shared)."""
    namespace = {}
    for number, source in enumerate(solution_code_cells("05_generation")):
        exec(compile(source, f"05_generation:cell{number}", "exec"), namespace)
    return namespace


def outcomes(ex, fn, public_only=False):
    """(case name, passed, message) for every case (hidden ones included), as the grader sees them."""
    results = []
    for case in ex.public_cases() if public_only else ex.cases:
        inputs = ex.inputs(case)
        outputs, report = run_case(fn, ex.call, inputs)
        if report["status"] != "ok":
            results.append((case.name, False, report["message"]))
            continue
        passed, reason, hint = diagnose(ex, inputs, outputs)
        results.append((case.name, passed, f"{reason}. Hint: {hint}"))
    return results


# ----------------------------------------------------------------------------- utils.llama


def test_llama_reproduces_transformers_logits_on_smollm2(smollm2):
    from utils.llama import load_smollm2

    tokenizer, hf = smollm2
    ours = load_smollm2()
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            assert (ours(ids) - hf(ids).logits).abs().max() <= 1e-4, prompt
        # with a cache: a prefill, then one token at a time, against transformers' own cached run
        from transformers import DynamicCache

        ids = tokenizer(PROMPTS[2], return_tensors="pt").input_ids
        mine, theirs = ours.new_cache(), DynamicCache()
        for start, stop in [(0, 6)] + [(t, t + 1) for t in range(6, ids.shape[1])]:
            a = ours(ids[:, start:stop], cache=mine)
            b = hf(input_ids=ids[:, start:stop], cache=theirs, use_cache=True).logits
            assert (a - b).abs().max() <= 1e-4, start
        assert mine.get_seq_length() == ids.shape[1]
        # a block of new tokens after a cache (speculative verification) sees the right positions
        cache = ours.new_cache()
        ours(ids[:, :8], cache=cache)
        assert (ours(ids[:, 8:12], cache=cache) - hf(ids[:, :12]).logits[:, 8:]).abs().max() <= 1e-4


def test_the_notebooks_llama_is_the_course_llama(solution):
    """The notebook assembles its own Llama from the learner's pieces: it gives transformers' logits."""
    tokenizer, hf = solution["tokenizer"], solution["hf_model"]
    with torch.enable_grad():          # the cells switch gradients off; this test process keeps them
        exec(compile("\n\n".join(c for c in _model_cells()), "model cells", "exec"), solution)
    model = solution["model"]
    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4


def _model_cells():
    import nbformat

    from conftest import SOLUTIONS

    nb = nbformat.read(SOLUTIONS / "05_generation.ipynb", as_version=4)
    return [c.source for c in nb.cells if c.get("id") in ("c14", "c15", "c17")]


# ----------------------------------------------------------------------------- the solutions and references pass


def test_the_solutions_pass_every_case(solution):
    for ex in ASSIGNMENT.exercises:
        failures = [(name, message) for name, passed, message in outcomes(ex, solution[ex.callable]) if not passed]
        assert not failures, (ex.id, failures)


@pytest.mark.parametrize("secret", ["a", "b", "c", "d"])
def test_random_and_rejection_sampled_cases_pass_whatever_the_hidden_seed(solution, monkeypatch, secret):
    """sample's chi-square judge must not flake; top-p's inputs are redrawn away from float ties."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    for ex_id in ("generation.sample", "generation.top_p", "generation.top_k", "generation.min_p"):
        ex = exercise(ex_id)
        assert all(passed for _, passed, _ in outcomes(ex, solution[ex.callable])), ex_id


def test_the_course_references_pass_the_cheap_exercises():
    from utils import decoding, llama

    for ex_id, fn in (("generation.rms_norm", llama.rms_norm), ("generation.apply_rope", llama.apply_rope),
                      ("generation.repeat_kv", llama.repeat_kv), ("generation.kv_cache", llama.KVCache),
                      ("generation.top_k", decoding.top_k_filter), ("generation.top_p", decoding.top_p_filter),
                      ("generation.min_p", decoding.min_p_filter), ("generation.sample", decoding.sample),
                      ("generation.repetition_penalty", decoding.repetition_penalty),
                      ("generation.choice_processor", decoding.ChoiceLogitsProcessor)):
        assert all(passed for _, passed, _ in outcomes(exercise(ex_id), fn)), ex_id


def test_the_course_llama_generates_like_transformers(smollm2):
    """utils.decoding.generate on utils.llama.Llama gives LlamaForCausalLM.generate's tokens on SmolLM2."""
    from utils.decoding import generate
    from utils.llama import load_smollm2

    tokenizer, hf = smollm2
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    ours = generate(load_smollm2(), ids, 24, eos_token_id=tokenizer.eos_token_id)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert torch.equal(ours, theirs)


# ----------------------------------------------------------------------------- wrong implementations


def rms_layer_norm(x, weight, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], eps=eps) * weight


def rms_eps_outside(x, weight, eps=1e-5):
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight


def rope_interleaved(x, positions, theta=10000.0):
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    angles = positions[..., None].float() * inv_freq                       # (T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


def rope_no_positions(x, positions, theta=10000.0):
    from utils.llama import apply_rope

    return apply_rope(x, torch.arange(x.shape[2]), theta)


def rope_default_theta(x, positions, theta=10000.0):
    from utils.llama import apply_rope

    return apply_rope(x, positions, 10000.0)


def repeat_tiled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


class CacheReturnsNew:
    def __init__(self):
        self.k = {}

    def update(self, k, v, layer_idx):
        self.k[layer_idx] = self.k[layer_idx] + k.shape[-2] if layer_idx in self.k else k.shape[-2]
        return k, v

    def get_seq_length(self, layer_idx=0):
        return self.k.get(layer_idx, 0)

    def crop(self, length):
        self.k = {i: min(n, length) for i, n in self.k.items()}


class CacheCountsCalls:
    def __init__(self):
        from utils.llama import KVCache

        self.inner, self.calls = KVCache(), {}

    def update(self, k, v, layer_idx):
        self.calls[layer_idx] = self.calls.get(layer_idx, 0) + 1
        return self.inner.update(k, v, layer_idx)

    def get_seq_length(self, layer_idx=0):
        return self.calls.get(layer_idx, 0)

    def crop(self, length):
        self.inner.crop(length)


class CacheNoCrop(CacheCountsCalls):
    def get_seq_length(self, layer_idx=0):
        return self.inner.get_seq_length(layer_idx)

    def crop(self, length):
        pass


def generate_without_cache(model, input_ids, max_new_tokens, eos_token_id=None, use_cache=True, next_token=None):
    from utils.decoding import generate

    return generate(model, input_ids, max_new_tokens, eos_token_id, use_cache=False)


def generate_refeeds_everything(model, input_ids, max_new_tokens, eos_token_id=None, use_cache=True, next_token=None):
    cache = model.new_cache() if use_cache else None
    ids = input_ids
    for _ in range(max_new_tokens):
        token = model(ids, cache=cache)[:, -1].argmax(-1)
        ids = torch.cat([ids, token[:, None]], 1)
        if eos_token_id is not None and (token == eos_token_id).all():
            break
    return ids


def generate_ignores_eos(model, input_ids, max_new_tokens, eos_token_id=None, use_cache=True, next_token=None):
    from utils.decoding import generate

    return generate(model, input_ids, max_new_tokens, None, use_cache)


def generate_first_position(model, input_ids, max_new_tokens, eos_token_id=None, use_cache=True, next_token=None):
    cache = model.new_cache() if use_cache else None
    ids, feed = input_ids, input_ids
    for _ in range(max_new_tokens):
        token = model(feed, cache=cache)[:, 0].argmax(-1)
        ids = torch.cat([ids, token[:, None]], 1)
        feed = token[:, None] if use_cache else ids
        if eos_token_id is not None and (token == eos_token_id).all():
            break
    return ids


def generate_raises(model, input_ids, max_new_tokens, eos_token_id=None, use_cache=True, next_token=None):
    raise RuntimeError("my loop broke")


def top_k_exactly_k(logits, k):
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.topk(k, -1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_drops_crossing(logits, p):
    probs, order = logits.softmax(-1).sort(-1, descending=True)
    remove = probs.cumsum(-1) > p
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def top_p_in_place(logits, p):
    from utils.decoding import top_p_filter

    logits.copy_(top_p_filter(logits, p))
    return logits


def min_p_absolute(logits, min_p):
    probs = logits.softmax(-1)
    remove = probs < min_p
    remove[torch.arange(len(probs)), probs.argmax(-1)] = False
    return logits.masked_fill(remove, float("-inf"))


def penalty_always_divides(logits, input_ids, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, input_ids, True)
    return torch.where(seen, logits / penalty, logits)


def penalty_per_occurrence(logits, input_ids, penalty):
    out = logits.clone()
    for b in range(input_ids.shape[0]):
        for token in input_ids[b].tolist():
            out[b, token] = out[b, token] * penalty if out[b, token] < 0 else out[b, token] / penalty
    return out


def sample_argmax(logits, generator=None, temperature=1.0):
    return logits.argmax(-1)


def sample_no_temperature(logits, generator=None, temperature=1.0):
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def sample_times_temperature(logits, generator=None, temperature=1.0):
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial((logits * temperature).softmax(-1), 1, generator=generator).squeeze(-1)


def sample_global_rng(logits, generator=None, temperature=1.0):
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial((logits / temperature).softmax(-1), 1).squeeze(-1)


def sample_first_row_only(logits, generator=None, temperature=1.0):
    if temperature == 0:
        return logits.argmax(-1)
    probs = (logits[:1] / temperature).softmax(-1)
    return torch.multinomial(probs, logits.shape[0], replacement=True, generator=generator).squeeze(0)


def sample_gumbel_biased(logits, generator=None, temperature=1.0):
    """A plausible-looking sampler with the wrong noise (uniform instead of Gumbel): wrong frequencies."""
    if temperature == 0:
        return logits.argmax(-1)
    noise = torch.rand(logits.shape, generator=generator)
    return (logits / temperature + noise).argmax(-1)


def beam_greedy(model, input_ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    from utils.decoding import generate

    return generate(model, input_ids, max_new_tokens, eos_token_id)


def beam_no_normalisation(model, input_ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    from utils.decoding import beam_search

    return beam_search(model, input_ids, num_beams, max_new_tokens, 0.0, eos_token_id)


def beam_num_beams_candidates(model, input_ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    beams, scores, finished = input_ids, torch.zeros(1), []
    for step in range(1, max_new_tokens + 1):
        logprobs = torch.log_softmax(model(beams)[:, -1], -1)
        V = logprobs.shape[-1]
        top_scores, top_index = (scores[:, None] + logprobs).flatten().topk(num_beams)
        next_beams, next_scores = [], []
        for score, index in zip(top_scores.tolist(), top_index.tolist()):
            beam, token = divmod(index, V)
            sequence = torch.cat([beams[beam], torch.tensor([token])])
            if token == eos_token_id or step == max_new_tokens:
                finished.append((score / step ** length_penalty, sequence))
            else:
                next_beams.append(sequence)
                next_scores.append(score)
        finished = sorted(finished, key=lambda item: -item[0])[:num_beams]
        if len(finished) == num_beams or not next_beams:
            break
        beams, scores = torch.stack(next_beams), torch.tensor(next_scores)
    return finished[0][1][None]


def spec_returns_draft(model, draft, input_ids, max_new_tokens, k=4, eos_token_id=None):
    from utils.decoding import generate

    return generate(draft, input_ids, max_new_tokens, eos_token_id), 1.0


def spec_off_by_one(model, draft, input_ids, max_new_tokens, k=4, eos_token_id=None):
    """Compares proposal i with the model's choice AT position i (one too late), without a cache."""
    ids, accepted, proposed = input_ids, 0, 0
    while ids.shape[1] - input_ids.shape[1] < max_new_tokens:
        proposals = []
        for _ in range(k):
            proposals.append(draft(torch.cat([ids] + proposals, 1))[:, -1].argmax(-1, keepdim=True))
        proposals = torch.cat(proposals, 1)
        choices = model(torch.cat([ids, proposals], 1))[:, ids.shape[1]:].argmax(-1)     # (1, k): shifted
        a = 0
        while a < k - 1 and proposals[0, a] == choices[0, a]:
            a += 1
        accepted, proposed = accepted + a, proposed + k
        ids = torch.cat([ids, proposals[:, :a], choices[:, a:a + 1]], 1)[:, :input_ids.shape[1] + max_new_tokens]
    return ids, accepted / proposed


def spec_one_call_per_proposal(model, draft, input_ids, max_new_tokens, k=4, eos_token_id=None):
    """Right tokens, but each proposal verified by its own call of the model: no saving."""
    from utils.decoding import generate

    ids = generate(model, input_ids, max_new_tokens, eos_token_id, use_cache=False)
    return ids, 1.0


def choice_no_eos_after_a_whole_choice(choices, prompt_length, eos_token_id):
    from utils.decoding import ChoiceLogitsProcessor

    class Wrong(ChoiceLogitsProcessor):
        def allowed(self, generated):
            tokens = [t for t in super().allowed(generated) if t != eos_token_id]
            return tokens or [eos_token_id]

    return Wrong(choices, prompt_length, eos_token_id)


def choice_stops_at_every_whole_choice(choices, prompt_length, eos_token_id):
    from utils.decoding import ChoiceLogitsProcessor

    class Wrong(ChoiceLogitsProcessor):
        def allowed(self, generated):
            tokens = super().allowed(generated)
            return [eos_token_id] if eos_token_id in tokens else tokens

    return Wrong(choices, prompt_length, eos_token_id)


def choice_prompt_counted(choices, prompt_length, eos_token_id):
    from utils.decoding import ChoiceLogitsProcessor

    return ChoiceLogitsProcessor(choices, 0, eos_token_id)


WRONG = [
    ("generation.rms_norm", rms_layer_norm, "that is LayerNorm"),
    ("generation.rms_norm", rms_eps_outside, "inside, torch.rsqrt"),
    ("generation.apply_rope", rope_interleaved, "neighbouring pairs"),
    ("generation.apply_rope", rope_no_positions, "the number of cached tokens"),
    ("generation.apply_rope", rope_default_theta, "theta argument"),
    ("generation.repeat_kv", repeat_tiled, "tiled"),
    ("generation.kv_cache", CacheReturnsNew, "ALL the layer's keys"),
    ("generation.kv_cache", CacheCountsCalls, "cached POSITIONS"),
    ("generation.kv_cache", CacheNoCrop, "crop(length)"),
    ("generation.generate", generate_without_cache, "feed the prompt once"),
    ("generation.generate", generate_refeeds_everything, "feed only the new token"),
    ("generation.generate", generate_ignores_eos, "eos_token_id"),
    ("generation.generate", generate_first_position, "LAST position"),
    ("generation.generate", generate_raises, "RuntimeError: my loop broke"),
    ("generation.top_k", top_k_exactly_k, "ties"),
    ("generation.top_p", top_p_drops_crossing, "takes the total past p"),
    ("generation.top_p", top_p_in_place, "changed in place"),
    ("generation.min_p", min_p_absolute, "relative"),
    ("generation.repetition_penalty", penalty_always_divides, "NEGATIVE"),
    ("generation.repetition_penalty", penalty_per_occurrence, "once per"),
    ("generation.sample", sample_argmax, "greedy"),
    ("generation.sample", sample_no_temperature, "divide the logits by the temperature"),
    ("generation.sample", sample_times_temperature, "multiplied by the temperature"),
    ("generation.sample", sample_global_rng, "generator"),
    ("generation.sample", sample_first_row_only, "first row"),
    ("generation.sample", sample_gumbel_biased, "do not follow softmax"),
    ("generation.beam_search", beam_greedy, "greedy decoding"),
    ("generation.beam_search", beam_no_normalisation, "generated_length ** length_penalty"),
    ("generation.beam_search", beam_num_beams_candidates, "2 * num_beams"),
    ("generation.speculative", spec_returns_draft, "accept proposal i only if"),
    ("generation.speculative", spec_off_by_one, "the tokens differ"),
    ("generation.speculative", spec_one_call_per_proposal, "ONE call"),
    ("generation.choice_processor", choice_no_eos_after_a_whole_choice, "both EOS"),
    ("generation.choice_processor", choice_stops_at_every_whole_choice, "both EOS"),
    ("generation.choice_processor", choice_prompt_counted, "after the prompt"),
]


@pytest.mark.parametrize("ex_id, fn, hint", WRONG, ids=[fn.__name__ for _, fn, _ in WRONG])
def test_known_mistakes_fail_with_their_hint(ex_id, fn, hint):
    results = outcomes(exercise(ex_id), fn, public_only=True)   # public cases: what the self-check shows
    assert not all(passed for _, passed, _ in results), results
    assert any(hint in message for _, _, message in results), results


def test_a_failing_generate_does_not_cost_the_other_exercises(solution):
    """Each exercise is graded on its own model: a broken generate leaves sample's points intact."""
    assert not any(passed for _, passed, _ in outcomes(exercise("generation.generate"), generate_raises, True))
    assert all(passed for _, passed, _ in outcomes(exercise("generation.sample"), solution["sample"]))


def test_the_sample_judge_never_crashes_on_garbage():
    ex = exercise("generation.sample")
    inputs = ex.inputs(ex.cases[0])
    R, N = inputs["logits"].shape[0], int(inputs["draws"])
    flags = {k: np.asarray(True) for k in ("same_seed_same_tokens", "other_seed_other_tokens", "input_untouched")}
    for got in ({}, {"tokens": np.zeros(3)}, {"tokens": np.full((R, N), 10**12), **flags},
                {"tokens": np.zeros((R, N), np.int64), **flags}):
        passed, reason, _ = diagnose(ex, inputs, got)
        assert not passed and reason
