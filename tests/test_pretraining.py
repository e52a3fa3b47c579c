"""Notebook 04's grading and ``utils.training``, without running the notebook.

The random exercises are judged by invariants and statistics, so two things must hold: a correct
implementation passes every case whatever the hidden seed (no flaky grades), and each known wrong
implementation fails with the hint that names its mistake. The solution notebook's own functions
are the correct implementations; the wrong ones are written here.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import utils.pretraining as reference
from autograder.capture import run_case
from autograder.compare import diagnose
from autograder.manifests import assignment, exercise
from autograder.oracles.pretraining import binomial_p, composition_cdf
from utils.gpt import GPT
from utils.models import ModernGPT
from utils.pretraining import get_batch, lr_at
from utils.training import CharTokenizer, History, estimate_loss, orthogonalize, train
from conftest import outcomes

ASSIGNMENT = assignment("04_pretraining")
NOTEBOOK = Path(__file__).resolve().parent.parent / "solutions" / "04_pretraining.ipynb"


def solution_namespace() -> dict:
    """The solution notebook's parameters, imports and solution cells, executed: "your" code."""
    cells = [cell for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]
    chosen = cells[:2] + [cell for cell in cells[2:] if cell.metadata.get("nbgrader", {}).get("solution")]
    namespace: dict = {}
    for number, cell in enumerate(chosen):
        exec(compile(cell.source, f"04_pretraining:cell{number}", "exec"), namespace)
    namespace["FAST"] = True
    return namespace


@pytest.fixture(scope="module")
def solution():
    return solution_namespace()


@pytest.mark.parametrize("secret", ["llm-course-default-secret", "a", "b", "c", "d"])
def test_the_solutions_pass_every_case_whatever_the_hidden_seed(solution, monkeypatch, secret):
    """Five hidden seeds: a statistical judge that flaked one time in a few would show up here."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    for ex in ASSIGNMENT.exercises:
        failures = [(name, message) for name, passed, message in outcomes(ex, solution[ex.callable]) if not passed]
        assert not failures, (ex.id, failures)


def test_every_exercise_names_a_course_version_that_passes_the_same_grading():
    """The demos fall back on `reference_impl` (autograder.use): it must exist and meet the contract."""
    for ex in ASSIGNMENT.exercises:
        module, name = ex.reference_impl.split(":")
        assert module == "utils.pretraining", ex.id
        fn = getattr(reference, name)
        assert all(passed for _, passed, _ in outcomes(ex, fn)), ex.id


def test_utils_training_does_not_import_the_references_at_the_top():
    """The grader's sandbox leaves utils/pretraining.py out while 04 is graded; utils.training stays."""
    import ast

    source = (NOTEBOOK.parent.parent / "utils" / "training.py").read_text()
    top_level = [node for node in ast.parse(source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [getattr(node, "module", None) or "" for node in top_level] + \
            [alias.name for node in top_level for alias in node.names]
    assert not any("pretraining" in name for name in names), names


@pytest.mark.slow
def test_no_correct_reference_fails_under_a_thousand_secrets(monkeypatch):
    """Issue 9: the judges' promise, measured. Each random case fails a correct implementation with
    probability at most 1e-6, so over 1,000 secrets (about 6,000 hidden cases, plus the public ones)
    a single failure would be a one-in-150 event: it would mean a judge is wrong. About a minute."""
    start = time.perf_counter()
    judged = 0
    random_exercises = [ex for ex in ASSIGNMENT.exercises if ex.id in (
        "pretraining.mask_tokens", "pretraining.span_corrupt", "pretraining.get_batch")]
    for i in range(1000):
        monkeypatch.setenv("AUTOGRADER_SECRET", f"secret-{i}")
        for ex in random_exercises:
            for case in ex.cases:
                if not case.hidden and i > 0:
                    continue                   # public inputs do not depend on the secret
                inputs = ex.inputs(case)
                outputs, report = run_case(getattr(reference, ex.callable), ex.call, inputs)
                assert report["status"] == "ok", (i, ex.id, case.name, report)
                passed, reason, _ = diagnose(ex, inputs, outputs)
                assert passed, (f"secret-{i}", ex.id, case.name, reason)
                judged += 1
    print(f"{judged} cases judged in {time.perf_counter() - start:.0f} s")


def test_binomial_p_is_an_exact_conservative_tail():
    """Under the null, P(binomial_p(K) < a) <= a for every a: summed exactly over K's law."""
    from scipy.stats import binom

    for n, p in ((40, 0.15), (200, 0.5), (7, 0.9)):
        k = np.arange(n + 1)
        pmf, pv = binom.pmf(k, n, p), binomial_p(k, n, p)
        for a in (1e-6, 1e-3, 0.05, 0.5):
            assert pmf[pv < a].sum() <= a + 1e-12


def test_composition_cdf_is_the_law_of_a_uniform_composition():
    """Enumerate every composition of 9 into 3 parts: the first and last part have composition_cdf's law."""
    import itertools

    total, parts = 9, 3
    compositions = [c for c in itertools.product(range(1, total + 1), repeat=parts) if sum(c) == total]
    assert len(compositions) == math.comb(total - 1, parts - 1)
    cdf = composition_cdf(total, parts)
    for column in (0, parts - 1):
        empirical = [sum(c[column] <= j for c in compositions) / len(compositions) for j in range(total + 1)]
        assert np.allclose(empirical, cdf)
    assert composition_cdf(5, 1).tolist() == [0, 0, 0, 0, 0, 1]


# ----------------------------------------------------------------------------- wrong implementations

def loss_no_shift(logits, input_ids):
    return F.cross_entropy(logits.flatten(0, 1), input_ids.flatten(), ignore_index=-100)


def loss_per_sequence(logits, input_ids):
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none", ignore_index=-100)
    real = (input_ids[:, 1:] != -100).float()
    return ((per_token * real).sum(1) / real.sum(1)).mean()


def loss_detached(logits, input_ids):
    return torch.tensor(F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten()).item())


def mask_all_with_mask_token(input_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None,
                             special_token_ids=()):
    special = torch.isin(input_ids, torch.tensor(list(special_token_ids)))
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    return torch.where(chosen, mask_token_id, input_ids), torch.where(chosen, input_ids, -100)


def mask_specials_too(input_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None,
                      special_token_ids=()):
    chosen = torch.rand(input_ids.shape, generator=generator) < mlm_probability
    draw = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(chosen & (draw < 0.8), mask_token_id, input_ids)
    inputs = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, input_ids, -100)


def mask_global_rng(input_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None, special_token_ids=()):
    return mask_specials_too(input_ids, mask_token_id, vocab_size, mlm_probability, None, ())


def mask_labels_only_masked(input_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None,
                            special_token_ids=()):
    special = torch.isin(input_ids, torch.tensor(list(special_token_ids)))
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    draw = torch.rand(input_ids.shape, generator=generator)
    inputs = torch.where(chosen & (draw < 0.8), mask_token_id, input_ids)
    inputs = torch.where(chosen & (draw >= 0.8) & (draw < 0.9),
                         torch.randint(vocab_size, input_ids.shape, generator=generator), inputs)
    return inputs, torch.where(chosen & (draw < 0.8), input_ids, -100)


def batch_off_by_one(data, block_size, batch_size, generator=None):
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    return (torch.stack([data[i:i + block_size] for i in starts]),
            torch.stack([data[i + 1:i + 1 + block_size] for i in starts]))


def batch_y_equals_x(data, block_size, batch_size, generator=None):
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in starts])
    return x, x.clone()


def batch_always_start(data, block_size, batch_size, generator=None):
    x = data[:block_size].repeat(batch_size, 1)
    return x, data[1:block_size + 1].repeat(batch_size, 1)


def lr_to_zero(step, warmup, total, max_lr, min_lr):
    return lr_at(step, warmup, total, max_lr, 0.0) if step < total else 0.0


def lr_cosine_from_zero(step, warmup, total, max_lr, min_lr):
    if step < warmup:
        return max_lr * step / warmup
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))


def span_fixed_positions(input_ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=(), generator=None):
    """Always the same spans, evenly spaced: every invariant holds, the randomness does not."""
    L = len(input_ids)
    n_noise = min(max(round(L * noise_density), 1), L - 1)
    n_spans = min(max(round(n_noise / mean_span_length), 1), n_noise, L - n_noise)
    noise = [n_noise // n_spans + (i < n_noise % n_spans) for i in range(n_spans)]
    kept = [(L - n_noise) // n_spans + (i < (L - n_noise) % n_spans) for i in range(n_spans)]
    encoder, decoder, position = [], [], 0
    for i, (k, n) in enumerate(zip(kept, noise)):
        encoder += input_ids[position:position + k].tolist() + [sentinel_ids[i]]
        decoder += [sentinel_ids[i]] + input_ids[position + k:position + k + n].tolist()
        position += k + n
    return torch.tensor(encoder), torch.tensor(decoder + [sentinel_ids[n_spans]])


def span_no_closing_sentinel(input_ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=(), generator=None):
    encoder, decoder = reference.span_corrupt(input_ids, noise_density, mean_span_length, sentinel_ids, generator)
    return encoder, decoder[:-1]


def _spans(input_ids, kept, noise, sentinel_ids, trailing=()):
    """Encoder input and decoder target for given kept/noise lengths (and optional kept text at the end)."""
    ids, encoder, decoder, position = input_ids.tolist(), [], [], 0
    for i, (k, n) in enumerate(zip(kept, noise)):
        encoder += ids[position:position + k] + [sentinel_ids[i]]
        decoder += [sentinel_ids[i]] + ids[position + k:position + k + n]
        position += k + n
    encoder += ids[position:]
    return torch.tensor(encoder), torch.tensor(decoder + [sentinel_ids[len(noise)]])


def span_even_noise(input_ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=(), generator=None):
    """Random kept lengths, but every noise span as long as the others: positions random, lengths not."""
    n_noise, n_spans = reference.span_counts(len(input_ids), noise_density, mean_span_length)
    total = len(input_ids) - n_noise
    cuts = sorted((torch.randperm(total - 1, generator=generator)[: n_spans - 1] + 1).tolist())
    kept = np.diff([0, *cuts, total]).tolist()
    noise = [n_noise // n_spans + (i < n_noise % n_spans) for i in range(n_spans)]
    return _spans(input_ids, kept, noise, sentinel_ids)


def span_ends_with_kept_text(input_ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=(), generator=None):
    """The T5 paper's figure: kept text after the last span, which the recipe never produces."""
    n_noise, n_spans = reference.span_counts(len(input_ids), noise_density, mean_span_length)
    total = len(input_ids) - n_noise          # kept tokens in n_spans + 1 parts: the last one after the noise
    cuts = sorted((torch.randperm(total - 1, generator=generator)[: n_spans] + 1).tolist())
    kept = np.diff([0, *cuts, total]).tolist()
    noise_cuts = sorted((torch.randperm(n_noise - 1, generator=generator)[: n_spans - 1] + 1).tolist())
    noise = np.diff([0, *noise_cuts, n_noise]).tolist()
    return _spans(input_ids, kept[:-1], noise, sentinel_ids)


def mask_wrong_split(input_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None, special_token_ids=()):
    """70 / 15 / 15 instead of 80 / 10 / 10: every invariant holds, the split does not."""
    special = torch.isin(input_ids, torch.tensor(list(special_token_ids)))
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    draw = torch.rand(input_ids.shape, generator=generator)
    inputs = torch.where(chosen & (draw < 0.7), mask_token_id, input_ids)
    inputs = torch.where(chosen & (draw >= 0.7) & (draw < 0.85),
                         torch.randint(vocab_size, input_ids.shape, generator=generator), inputs)
    return inputs, torch.where(chosen, input_ids, -100)


def mask_rate_twelve_percent(input_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None,
                             special_token_ids=()):
    """The right recipe at 0.8 times the rate (chosen, then 'only the 80% are masked' counted as the rate)."""
    return reference.mask_tokens(input_ids, mask_token_id, vocab_size, 0.8 * mlm_probability, generator,
                                 special_token_ids)


def batch_even_starts(data, block_size, batch_size, generator=None):
    """Only even starts: windows and shifts are right, half the starts never come."""
    starts = 2 * torch.randint((len(data) - block_size + 1) // 2, (batch_size,), generator=generator)
    return torch.stack([data[i:i + block_size] for i in starts]), torch.stack([data[i + 1:i + 1 + block_size] for i in starts])


WRONG = [
    ("pretraining.causal_lm_loss", loss_no_shift, "NEXT token"),
    ("pretraining.causal_lm_loss", loss_per_sequence, "averaged each sequence"),
    ("pretraining.causal_lm_loss", loss_detached, "still connected"),
    ("pretraining.mask_tokens", mask_all_with_mask_token, "80%"),
    ("pretraining.mask_tokens", mask_specials_too, "never mask special tokens"),
    ("pretraining.mask_tokens", mask_global_rng, "generator"),
    ("pretraining.mask_tokens", mask_labels_only_masked, "must be predicted"),
    ("pretraining.get_batch", batch_off_by_one, "exclusive"),
    ("pretraining.get_batch", batch_y_equals_x, "NEXT tokens"),
    ("pretraining.get_batch", batch_always_start, "randint"),
    ("pretraining.lr_at", lr_to_zero, "not 0"),
    ("pretraining.lr_at", lr_cosine_from_zero, "where the warm-up ends"),
    ("pretraining.span_corrupt", span_fixed_positions, "random"),
    ("pretraining.span_corrupt", span_no_closing_sentinel, "decoder_target"),
    ("pretraining.span_corrupt", span_even_noise, "uniformly"),
    ("pretraining.span_corrupt", span_ends_with_kept_text, "ends with noise"),
    ("pretraining.mask_tokens", mask_wrong_split, "exact binomial test"),
    ("pretraining.mask_tokens", mask_rate_twelve_percent, "only the [MASK]ed 80% are labelled"),
    ("pretraining.get_batch", batch_even_starts, "equally likely"),
]


@pytest.mark.parametrize("ex_id, fn, hint", WRONG, ids=[fn.__name__ for _, fn, _ in WRONG])
def test_known_mistakes_fail_with_their_hint(ex_id, fn, hint):
    results = outcomes(exercise(ex_id), fn)
    assert not all(passed for _, passed, _ in results), results   # some mistakes only show on some inputs
    assert any(hint in message for _, _, message in results), results


def test_a_judge_never_crashes_on_garbage():
    """Untrusted arrays of any shape or type become a failed case with a reason, not an exception."""
    ex = exercise("pretraining.span_corrupt")
    inputs = ex.inputs(ex.cases[0])
    import numpy as np

    for got in ({}, {"encoder_input": np.zeros(3)}, {"encoder_input": np.zeros((200, 57), np.int64),
                                                      "decoder_target": np.full((200, 14), 10**12)}):
        passed, reason, _ = diagnose(ex, inputs, got)
        assert not passed and reason


# ----------------------------------------------------------------------------- utils.training


def test_lr_at_matches_transformers_schedule():
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, 10, 50, min_lr=2e-4)
    for step in range(50):
        assert lr_at(step, 10, 50, 2e-3, 2e-4) == pytest.approx(2e-3 * schedule.lr_lambdas[0](step), abs=1e-12)


@pytest.fixture
def sentence():
    """A repeated sentence as (vocabulary size, ids): easy to learn in a hundred steps."""
    torch.manual_seed(0)
    text = "to be or not to be that is the question " * 50
    tok = CharTokenizer(text)
    return tok.vocab_size, torch.tensor(tok.encode(text))


def test_train_lowers_the_loss_and_respects_a_time_budget(sentence):
    vocab_size, data = sentence
    model = GPT(vocab_size, n_positions=16, d_model=32, n_layers=1, n_heads=2)
    generator = torch.Generator().manual_seed(0)
    before = estimate_loss(model, data, 16, n_batches=4)
    history = train(model, lambda step: get_batch(data, 16, 8, generator), steps=150, max_lr=1e-2, warmup=10,
                    evaluate=lambda: estimate_loss(model, data, 16, n_batches=4), eval_every=50, progress=False)
    assert isinstance(history, History) and len(history.steps) == 150
    assert history.val_steps == [50, 100, 149]
    assert history.final_val < 0.5 * before            # a repeated sentence is easy to learn
    assert history.lrs[0] == 0.0 and history.lrs[10] == pytest.approx(1e-2)
    assert history.lrs[-1] == pytest.approx(1e-3, rel=0.05)   # the cosine ends at min_lr = max_lr / 10
    # On the real clock only what no machine load can break: the run never stops before its budget,
    # and it does stop (the exact schedule is tested on a fake clock below).
    timed = train(model, lambda step: get_batch(data, 16, 8, generator), steps=10**6, seconds=0.5, max_lr=1e-3,
                  progress=False)
    assert 0.5 <= timed.seconds < 60 and 0 < len(timed.steps) < 10**6


@pytest.mark.parametrize("tick", [1 / 64, 1 / 32, "slower at half time"])
def test_the_time_budget_schedule_follows_the_clock(sentence, monkeypatch, tick):
    """train(seconds=...) on a fake clock that advances by a fixed tick per step (exact binary
    fractions): deterministic whatever the load of the machine, and exact, so it can fail. The
    cosine must be stretched over the steps that fit in the budget and end at its floor."""
    import types

    import utils.training as training

    vocab_size, data = sentence
    model = GPT(vocab_size, n_positions=16, d_model=32, n_layers=1, n_heads=2)
    generator = torch.Generator().manual_seed(0)
    clock = {"now": 0.0}
    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))

    def next_batch(step):
        if tick == "slower at half time":                  # 1/64 s per step, then 1/32 after 0.25 s
            clock["now"] += 1 / 64 if clock["now"] < 0.25 else 1 / 32
        else:
            clock["now"] += tick
        return get_batch(data, 16, 8, generator)

    timed = train(model, next_batch, steps=10**6, seconds=0.5, max_lr=1e-3, min_lr=1e-4, warmup=5, progress=False)
    assert timed.seconds == 0.5
    if tick == "slower at half time":
        assert len(timed.steps) == 16 + 8                  # 16 steps in the first 0.25 s, 8 in the rest
        assert timed.lrs[5] == pytest.approx(1e-3)         # warm-up done, cosine begins
        assert all(b <= a for a, b in zip(timed.lrs[5:], timed.lrs[6:]))   # it only decays
    else:
        n = round(0.5 / tick)                             # steps start at 0, tick, ..., 0.5 - tick
        assert len(timed.steps) == n
        assert timed.lrs == pytest.approx([lr_at(s, 5, n, 1e-3, 1e-4) for s in range(n)], abs=1e-15)
    assert timed.lrs[-1] < 1e-4 + 0.05 * (1e-3 - 1e-4)     # the last step is at the floor's doorstep


@pytest.mark.parametrize("cls", [GPT, ModernGPT])
def test_checkpoint_round_trip(tmp_path, cls):
    torch.manual_seed(0)
    model = cls(vocab_size=20, n_positions=8, d_model=16, n_layers=2, n_heads=2)
    for p in model.parameters():                            # ModernGPT starts with zero projections
        p.data.add_(0.01 * torch.randn_like(p))
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    copy = cls.from_pretrained(folder)
    ids = torch.randint(0, 20, (2, 8))
    assert torch.equal(model.eval()(ids), copy(ids))
    assert copy.lm_head.weight is copy.wte.weight          # tying survives the round trip
    other = ModernGPT if cls is GPT else GPT
    with pytest.raises(ValueError, match=f"not a {other.__name__} checkpoint"):
        other.from_pretrained(folder)


def test_modern_gpt_is_causal_and_starts_as_identity_blocks():
    torch.manual_seed(0)
    model = ModernGPT(vocab_size=30, n_positions=16, d_model=32, n_layers=3, n_heads=4)
    ids = torch.randint(0, 30, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 30
    with torch.no_grad():
        assert torch.allclose(model(ids)[:, :6], model(changed)[:, :6])   # the future cannot leak back
        x = model.wte(ids)
        assert torch.equal(model.blocks[0](x, model.cos[:10], model.sin[:10]), x)  # zero-initialised outputs
        encoder = ModernGPT(vocab_size=30, n_positions=16, d_model=32, n_layers=1, n_heads=4, causal=False)
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(encoder(ids)[:, :6], encoder(changed)[:, :6])   # an encoder sees both sides


def test_muon_trains_and_orthogonalizes(sentence):
    G = torch.randn(2, 12, 5)
    assert torch.allclose(torch.linalg.svdvals(orthogonalize(G, steps=10)), torch.ones(2, 5), atol=0.35)
    vocab_size, data = sentence
    model = ModernGPT(vocab_size, n_positions=16, d_model=32, n_layers=1, n_heads=2)
    generator = torch.Generator().manual_seed(0)
    before = estimate_loss(model, data, 16, n_batches=4)
    train(model, lambda step: get_batch(data, 16, 8, generator), steps=100, max_lr=1e-2, muon_lr=0.02,
          optimizer="muon", warmup=10, progress=False)
    assert estimate_loss(model, data, 16, n_batches=4) < 0.5 * before
    with pytest.raises(ValueError, match="optimizer must be"):
        train(model, lambda step: get_batch(data, 16, 8, generator), steps=1, max_lr=1e-3, optimizer="sgd")


def test_char_tokenizer_refuses_unknown_characters():
    tok = CharTokenizer("abc", specials=["[MASK]"])
    assert tok.decode(tok.encode("cab")) == "cab" and tok.token_id("[MASK]") == 3
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("abz")


# ----------------------------------------------------------------------------- the release notebook
