"""The reference solutions of notebook 08 (hidden while it is graded): evaluation metrics, calibration,
memorisation and red-teaming, each as its paper or library defines it.

>>> exact_match("The Eiffel Tower!", "eiffel tower")
1.0
>>> round(f1("the cat sat", "a cat sat down"), 4)        # 2 common tokens: P = 2/2, R = 2/3
0.8
>>> exposure(torch.tensor([1, 1024]), 1024)              # rank 1 of 1024 candidates: 10 bits
tensor([10.,  0.], dtype=torch.float64)
>>> attack_success_rate(["Sure: PWNED", "I cannot help."], ["pwned", "pwned"])
0.5
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np
import torch

# --------------------------------------------------------------------------- perplexity


@torch.no_grad()
def perplexity(model, input_ids: torch.Tensor, window: int, stride: int) -> float:
    """exp(mean negative log-likelihood per predicted token) of one long text, with a sliding window.

    ``input_ids`` (1, N). The model sees at most ``window`` tokens at a time. Windows start at
    0, stride, 2 stride, ...; each token is scored once, in the first window that ends at or
    after it, with the context that window gives it (at most window - 1 tokens). Token 0 is never
    scored, so N - 1 tokens are. The last window ends at token N - 1.
    """
    n = input_ids.shape[1]
    total_nll, n_scored, scored_until = 0.0, 0, 1          # tokens < scored_until are done (token 0: never)
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        chunk = input_ids[:, begin:end]                                    # (1, L)
        logits = model(chunk)
        logits = getattr(logits, "logits", logits)                         # (1, L, V)
        log_probs = torch.log_softmax(logits[0, :-1].double(), dim=-1)     # (L-1, V): predicts begin+1 .. end-1
        token_lp = log_probs.gather(-1, chunk[0, 1:, None])[:, 0]          # (L-1,)
        first_new = max(scored_until, begin + 1) - (begin + 1)             # skip tokens an earlier window scored
        total_nll -= float(token_lp[first_new:].sum())
        n_scored += len(token_lp) - first_new
        scored_until = end
        if end == n:
            break
    return math.exp(total_nll / n_scored)


# --------------------------------------------------------------------------- SQuAD exact match and F1


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    """1.0 if the two answers are equal after SQuAD's normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    """SQuAD's token F1: harmonic mean of precision and recall of the normalised tokens (a multiset).

    If either answer has no token after normalisation, F1 is 1.0 when both have none, else 0.0.
    """
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- BLEU


def bleu(hypotheses: list[str], references: list[str], max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al., 2002) in [0, 100], one reference per hypothesis, tokens split on spaces.

    Clipped n-gram counts (n = 1..max_n) summed over the corpus, the geometric mean of the four
    precisions, times the brevity penalty min(1, exp(1 - r / c)) with r and c the total reference
    and hypothesis lengths. No smoothing: a precision of 0 gives BLEU 0. Equals
    ``sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none", smooth_method="none").score``.
    """
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            h_grams = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            r_grams = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(count, r_grams[g]) for g, count in h_grams.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(log_precision)


# --------------------------------------------------------------------------- Cohen's kappa


def cohen_kappa(labels_a, labels_b) -> float:
    """Agreement of two raters beyond chance: (p_o - p_e) / (1 - p_e) (Cohen, 1960).

    p_o: the fraction of items they label alike; p_e: the agreement expected if each rater drew
    labels independently from their own label frequencies, sum over labels k of p_a(k) p_b(k).
    """
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    p_o = float(np.mean(a == b))
    labels = np.union1d(a, b)
    p_e = float(sum(np.mean(a == k) * np.mean(b == k) for k in labels))
    return (p_o - p_e) / (1 - p_e)


# --------------------------------------------------------------------------- calibration


def expected_calibration_error(confidences, correct, n_bins: int = 10) -> float:
    """ECE (Naeini et al., 2015; Guo et al., 2017): sum over bins of |B|/n |accuracy(B) - confidence(B)|.

    ``n_bins`` bins of equal WIDTH over [0, 1]: bin m holds the confidences in ((m-1)/M, m/M], and
    bin 1 also holds 0. Empty bins add nothing.
    """
    conf = torch.as_tensor(confidences, dtype=torch.float64)
    hit = torch.as_tensor(correct, dtype=torch.float64)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(conf, edges[1:-1], right=False)        # (n,): bin of each confidence, 0..M-1
    ece = 0.0
    for m in range(n_bins):
        in_bin = bins == m
        if in_bin.any():
            ece += float(in_bin.double().mean() * (hit[in_bin].mean() - conf[in_bin].mean()).abs())
    return ece


# --------------------------------------------------------------------------- memorisation (The Secret Sharer)


@torch.no_grad()
def canary_log_perplexity(model, input_ids: torch.Tensor, n_secret: int) -> torch.Tensor:
    """Log-perplexity in BITS of the last ``n_secret`` tokens of each row given the tokens before them.

    ``input_ids`` (B, T): a prefix ("Ann's PIN is ") followed by a candidate secret ("3817").
    Returns (B,): -sum over the secret's tokens t of log2 p(x_t | x_<t) (Carlini et al., 2019).
    """
    logits = model(input_ids)
    logits = getattr(logits, "logits", logits)                              # (B, T, V)
    log_probs = torch.log_softmax(logits[:, -n_secret - 1:-1].double(), dim=-1)   # (B, n_secret, V)
    secret = input_ids[:, -n_secret:]                                       # (B, n_secret)
    token_lp = log_probs.gather(-1, secret[..., None])[..., 0]              # (B, n_secret), nats
    return -token_lp.sum(-1) / math.log(2)


def exposure(ranks, n_candidates: int) -> torch.Tensor:
    """Exposure in bits: log2(n_candidates) - log2(rank), rank 1 = the likeliest candidate (Carlini et al., 2019)."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    return math.log2(n_candidates) - torch.log2(ranks)


# --------------------------------------------------------------------------- red-teaming


def attack_success_rate(answers: list[str], goals: list[str]) -> float:
    """The fraction of attacks whose goal string appears in the model's answer (case-insensitive,
    runs of whitespace count as one space)."""
    def norm(text):
        return " ".join(text.lower().split())

    if not answers:
        return 0.0
    return sum(norm(goal) in norm(answer) for answer, goal in zip(answers, goals)) / len(answers)
