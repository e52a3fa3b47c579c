"""Notebook 08, trusted side: evaluation metrics, calibration, exposure and attack success rate.

Oracles: ``transformers``' causal-LM loss (``ForCausalLMLoss``, what a model returns given
``labels``) window by window, with the labels of the Hugging Face perplexity guide; SQuAD v1.1's
evaluation script (its ``normalize_answer``, ``exact_match_score`` and ``f1_score``, copied below, with
SQuAD 2.0's rule for answers that normalise to nothing); ``sacrebleu.corpus_bleu``;
``sklearn.metrics.cohen_kappa_score``; ``sklearn.calibration.calibration_curve`` for the per-bin
accuracy and confidence of ECE; the definition of exposure of Carlini et al. (2019).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np
import torch

from ..manifests.safety import (ATTACK_SUCCESS_RATE, BLEU, CANARY_LOG_PERPLEXITY, COHEN_KAPPA, ECE, EXACT_MATCH, EXPOSURE,
                                F1, PERPLEXITY, unpack_texts)
from ..spec import Detector, Oracle
from .common import tensor as _t

# --------------------------------------------------------------------------- perplexity


def _window_logits(inputs, ids):
    return (_t(inputs, "table")[ids] + _t(inputs, "positions")[: ids.shape[1]]).double()


def _windows(inputs, stride=None):
    """Per window: the NLL of each predicted token (L-1,) and which of them no earlier window scored."""
    ids = _t(inputs, "input_ids")
    n, window = ids.shape[1], int(inputs["window"])
    stride = int(inputs["stride"]) if stride is None else stride
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        chunk = ids[:, begin:end]
        log_probs = torch.log_softmax(_window_logits(inputs, chunk)[0, :-1], dim=-1)     # (L-1, V)
        nll = -log_probs.gather(-1, chunk[0, 1:, None])[:, 0]                              # (L-1,)
        new = torch.arange(begin + 1, end) >= prev_end                                     # (L-1,)
        yield nll, new, end - prev_end
        prev_end = end
        if end == n:
            break


def perplexity_reference(inputs):
    """The Hugging Face guide's labels (earlier tokens -100), transformers' loss times the tokens it scored."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    ids = _t(inputs, "input_ids")
    n, window, stride = ids.shape[1], int(inputs["window"]), int(inputs["stride"])
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        chunk = ids[:, begin:end]                                   # (1, L)
        target_len = end - prev_end
        labels = chunk.clone()
        labels[:, :-target_len] = -100                              # already scored by an earlier window
        scored = int((labels[:, 1:] != -100).sum())                 # the loss shifts: token 0 of the window is never scored
        if scored:
            logits = _window_logits(inputs, chunk).float()
            loss = ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1])     # mean over the scored tokens
            total += float(loss) * scored
            count += scored
        prev_end = end
        if end == n:
            break
    return {"perplexity": np.float64(math.exp(total / count))}


def _ppl_variant(kind):
    def produce(inputs):
        if kind == "disjoint":
            parts = list(_windows(inputs, stride=int(inputs["window"])))
        else:
            parts = list(_windows(inputs))
        if kind == "overlap":
            nll = torch.cat([p[0] for p in parts])
            return {"perplexity": np.float64(math.exp(float(nll.mean())))}
        if kind in ("window mean", "mean of perplexities"):
            means = [float(p[0][p[1]].mean()) for p in parts if p[1].any()]
            value = math.exp(sum(means) / len(means)) if kind == "window mean" else sum(map(math.exp, means)) / len(means)
            return {"perplexity": np.float64(value)}
        if kind == "hf guide":      # weight = number of valid labels - 1, as the guide's num_loss_tokens
            weights = [p[2] - 1 for p in parts]
            means = [float(p[0][p[1]].mean()) if p[1].any() else 0.0 for p in parts]
            value = sum(w * m for w, m in zip(weights, means)) / sum(weights)
            return {"perplexity": np.float64(math.exp(value))}
        nll = torch.cat([p[0][p[1]] for p in parts])
        mean = float(nll.mean())
        value = {"disjoint": math.exp(mean), "log": mean, "inverse": math.exp(-mean), "bits": 2 ** mean,
                 "sum": math.exp(float(nll.sum()))}[kind]
        return {"perplexity": np.float64(value)}

    return produce


# --------------------------------------------------------------------------- SQuAD, from its official evaluation script (v1.1)


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth, normalize=normalize_answer):
    prediction_tokens = normalize(prediction).split()
    ground_truth_tokens = normalize(ground_truth).split()
    if not prediction_tokens or not ground_truth_tokens:         # SQuAD 2.0: no answer on one side
        return float(prediction_tokens == ground_truth_tokens)
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction, ground_truth, normalize=normalize_answer):
    return float(normalize(prediction) == normalize(ground_truth))


def _pairs(inputs):
    return list(zip(unpack_texts(inputs["predictions"]), unpack_texts(inputs["truths"])))


def _squad(score):
    return lambda inputs: {"scores": np.asarray([score(p, t) for p, t in _pairs(inputs)], dtype=np.float64)}


def _no_articles_kept(s):
    return " ".join("".join(ch for ch in s.lower() if ch not in set(string.punctuation)).split())


def _f1_variant(kind):
    def score(prediction, truth):
        if kind == "raw":
            pred, gold = prediction.split(), truth.split()
        elif kind == "lower":
            pred, gold = prediction.lower().split(), truth.lower().split()
        elif kind == "articles kept":
            pred, gold = _no_articles_kept(prediction).split(), _no_articles_kept(truth).split()
        elif kind == "chars":
            pred, gold = list(normalize_answer(prediction).replace(" ", "")), list(normalize_answer(truth).replace(" ", ""))
        else:
            pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
        if not pred or not gold:
            return float(pred == gold) if kind != "empty zero" else 0.0
        if kind == "set":
            same = len(set(pred) & set(gold))
        else:
            same = sum((Counter(pred) & Counter(gold)).values())
        if same == 0:
            return 0.0
        precision, recall = same / len(pred), same / len(gold)
        if kind == "set":
            precision, recall = same / len(set(pred)), same / len(set(gold))
        return {"precision": precision, "recall": recall, "mean": (precision + recall) / 2}.get(
            kind, 2 * precision * recall / (precision + recall))

    return _squad(score)


# --------------------------------------------------------------------------- BLEU


def bleu_reference(inputs):
    import sacrebleu

    hypotheses, references = unpack_texts(inputs["hypotheses"]), unpack_texts(inputs["references"])
    result = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none", smooth_method="none", force=True)
    return {"bleu": np.float64(result.score)}


def _ngram_stats(hyp, ref, n, clip=True):
    h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
    r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
    matches = sum(min(c, r[g]) if clip else (c if g in r else 0) for g, c in h.items())
    return matches, max(len(hyp) - n + 1, 0)


def _bleu_of(pairs, clip=True, brevity="standard", mean="geometric", scale=100.0):
    matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in pairs:
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, 5):
            m, t = _ngram_stats(hyp, ref, n, clip)
            matches[n - 1] += m
            totals[n - 1] += t
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    precisions = [m / t for m, t in zip(matches, totals)]
    if mean == "geometric":
        combined = math.exp(sum(map(math.log, precisions)) / 4)
    else:
        combined = sum(precisions) / 4
    if brevity == "none":
        bp = 1.0
    elif brevity == "reversed":
        bp = 1.0 if ref_len > hyp_len else math.exp(1 - hyp_len / ref_len)
    elif brevity == "always":
        bp = math.exp(1 - ref_len / hyp_len)
    else:
        bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return scale * bp * combined


def _bleu_variant(kind):
    def produce(inputs):
        pairs = [(h.split(), r.split()) for h, r in zip(unpack_texts(inputs["hypotheses"]), unpack_texts(inputs["references"]))]
        if kind == "sentence mean":
            value = sum(_bleu_of([pair]) for pair in pairs) / len(pairs)
        elif kind == "no clipping":
            value = _bleu_of(pairs, clip=False)
        elif kind == "no brevity":
            value = _bleu_of(pairs, brevity="none")
        elif kind == "brevity reversed":
            value = _bleu_of(pairs, brevity="reversed")
        elif kind == "brevity always":
            value = _bleu_of(pairs, brevity="always")
        elif kind == "arithmetic":
            value = _bleu_of(pairs, mean="arithmetic")
        else:
            value = _bleu_of(pairs, scale=1.0)
        return {"bleu": np.float64(value)}

    return produce


# --------------------------------------------------------------------------- Cohen's kappa


def kappa_reference(inputs):
    from sklearn.metrics import cohen_kappa_score

    return {"kappa": np.float64(cohen_kappa_score(inputs["labels_a"], inputs["labels_b"]))}


def _kappa_variant(kind):
    def produce(inputs):
        a, b = np.asarray(inputs["labels_a"]), np.asarray(inputs["labels_b"])
        labels = np.union1d(a, b)
        p_o = float(np.mean(a == b))
        if kind == "observed":
            return {"kappa": np.float64(p_o)}
        if kind == "uniform":
            p_e = 1.0 / len(labels)
        elif kind == "rater a only":
            p_e = float(sum(np.mean(a == k) ** 2 for k in labels))
        else:    # pooled marginals (Scott's pi)
            p_e = float(sum(((np.mean(a == k) + np.mean(b == k)) / 2) ** 2 for k in labels))
        return {"kappa": np.float64((p_o - p_e) / (1 - p_e))}

    return produce


# --------------------------------------------------------------------------- ECE


def _ece_from_curve(confidences, correct, n_bins, strategy="uniform", reduce="weighted"):
    from sklearn.calibration import calibration_curve

    correct = np.asarray(correct).astype(np.int64)
    prob_true, prob_pred = calibration_curve(correct, confidences, n_bins=n_bins, strategy=strategy)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.percentile(confidences, np.linspace(0, 1, n_bins + 1) * 100)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidences), minlength=n_bins)  # sklearn's own binning
    counts = counts[counts > 0]
    gaps = prob_true - prob_pred
    if reduce == "weighted":
        return float(np.sum(counts / counts.sum() * np.abs(gaps)))
    if reduce == "signed":
        return float(np.sum(counts / counts.sum() * gaps))
    if reduce == "unweighted":
        return float(np.mean(np.abs(gaps)))
    return float(np.max(np.abs(gaps)))       # "max": the maximum calibration error


def ece_reference(inputs):
    return {"ece": np.float64(_ece_from_curve(inputs["confidences"], inputs["correct"], int(inputs["n_bins"])))}


def _ece_variant(kind):
    def produce(inputs):
        conf, correct, n_bins = np.asarray(inputs["confidences"]), np.asarray(inputs["correct"]), int(inputs["n_bins"])
        if kind == "equal mass":
            value = _ece_from_curve(conf, correct, n_bins, strategy="quantile")
        elif kind == "global":
            value = abs(float(correct.mean()) - float(conf.mean()))
        elif kind == "floor":        # bins [lo, hi): floor(c * M), with 1.0 put in the last bin
            bins = np.minimum(np.floor(conf * n_bins).astype(np.int64), n_bins - 1)
            value = sum(np.mean(bins == m) * abs(correct[bins == m].mean() - conf[bins == m].mean())
                        for m in range(n_bins) if np.any(bins == m))
        else:
            value = _ece_from_curve(conf, correct, n_bins, reduce=kind)
        return {"ece": np.float64(value)}

    return produce


# --------------------------------------------------------------------------- canary log-perplexity and exposure


def _canary_nll(inputs):
    """NLL in nats of tokens 1..T-1 of every row (B, T-1), from the case's model."""
    ids = _t(inputs, "input_ids")
    logits = (_t(inputs, "table")[ids] + _t(inputs, "positions")[: ids.shape[1]]).double()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    return -log_probs.gather(-1, ids[:, 1:, None])[..., 0]


def canary_reference(inputs):
    """-log2 of transformers' sequence probability of the secret: ForCausalLMLoss with the prefix as -100."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    ids = _t(inputs, "input_ids")
    n_secret = int(inputs["n_secret"])
    logits = (_t(inputs, "table")[ids] + _t(inputs, "positions")[: ids.shape[1]]).float()
    labels = ids.clone()
    labels[:, :-n_secret] = -100
    bits = [float(ForCausalLMLoss(logits[b:b + 1], labels[b:b + 1], vocab_size=logits.shape[-1])) * n_secret / math.log(2)
            for b in range(ids.shape[0])]
    return {"bits": torch.tensor(bits, dtype=torch.float64)}


def _canary_variant(kind):
    def produce(inputs):
        n_secret = int(inputs["n_secret"])
        nll = _canary_nll(inputs)                         # (B, T-1)
        if kind == "own position":                        # token t scored with the logits of position t
            ids = _t(inputs, "input_ids")
            logits = (_t(inputs, "table")[ids] + _t(inputs, "positions")[: ids.shape[1]]).double()
            log_probs = torch.log_softmax(logits, dim=-1)
            own = -log_probs.gather(-1, ids[..., None])[..., 0]
            return {"bits": own[:, -n_secret:].sum(-1) / math.log(2)}
        part = {"whole": nll, "one more": nll[:, -n_secret - 1:], "one fewer": nll[:, -n_secret + 1:] if n_secret > 1 else nll[:, :0]}.get(kind, nll[:, -n_secret:])
        total = part.sum(-1)
        if kind == "nats":
            return {"bits": total}
        if kind == "mean":
            return {"bits": total / n_secret / math.log(2)}
        if kind == "log-probability":
            return {"bits": -total / math.log(2)}
        if kind == "log10":
            return {"bits": total / math.log(10)}
        return {"bits": total / math.log(2)}

    return produce


def exposure_reference(inputs):
    ranks = np.asarray(inputs["ranks"], dtype=np.float64)
    return {"exposure": np.log2(float(inputs["n_candidates"])) - np.log2(ranks)}


def _exposure_variant(kind):
    def produce(inputs):
        ranks, n = np.asarray(inputs["ranks"], dtype=np.float64), float(inputs["n_candidates"])
        value = {"nats": np.log(n) - np.log(ranks), "log10": np.log10(n) - np.log10(ranks),
                 "sign": np.log2(ranks) - np.log2(n), "rank + 1": np.log2(n) - np.log2(ranks + 1),
                 "fraction": ranks / n, "log2 rank": np.log2(ranks)}[kind]
        return {"exposure": value}

    return produce


# --------------------------------------------------------------------------- attack success rate


def _asr(inputs, contains=True, case=False, spaces=True, complement=False, percent=False):
    answers, goals = unpack_texts(inputs["answers"]), unpack_texts(inputs["goals"])

    def norm(text):
        text = text if case else text.lower()
        return " ".join(text.split()) if spaces else text

    hits = [(norm(g) in norm(a)) if contains else (norm(g) == norm(a)) for a, g in zip(answers, goals)]
    rate = sum(hits) / len(hits)
    rate = 1 - rate if complement else rate
    return {"asr": np.float64(100 * rate if percent else rate)}


ORACLES = {
    PERPLEXITY.id: Oracle(
        reference=perplexity_reference,
        detectors=(
            Detector("stride ignored", _ppl_variant("disjoint"),
                     "your windows do not overlap: each new window must start `stride` tokens after the previous one, "
                     "and score only the tokens the previous windows did not (they now have more context)"),
            Detector("overlap scored twice", _ppl_variant("overlap"),
                     "tokens in the overlap of two windows are scored twice: in each window keep only the tokens after "
                     "the previous window's end (the Hugging Face guide sets the other labels to -100)"),
            Detector("hf guide weighting", _ppl_variant("hf guide"),
                     "each window's mean loss is weighted by (its valid labels - 1), as in the Hugging Face guide: after "
                     "the first window every valid label is scored, so weight a window by the number of tokens it scored"),
            Detector("mean over windows", _ppl_variant("window mean"),
                     "you averaged the windows' mean losses: windows score different numbers of tokens, so add up the "
                     "NLL of every scored token and divide by the number of tokens once, at the end"),
            Detector("mean of window perplexities", _ppl_variant("mean of perplexities"),
                     "you averaged the windows' perplexities: perplexity is exp of the mean NLL over all scored tokens"),
            Detector("log-perplexity", _ppl_variant("log"),
                     "this is the mean negative log-likelihood (cross-entropy, in nats): perplexity is its exp"),
            Detector("inverse", _ppl_variant("inverse"),
                     "this is exp(mean log-probability), 1 / perplexity: use the NEGATIVE log-likelihood"),
            Detector("base 2", _ppl_variant("bits"),
                     "2 ** (mean NLL in nats) mixes bases: with natural logs, perplexity is exp(mean NLL)"),
            Detector("exp of the sum", _ppl_variant("sum"),
                     "exp of the total NLL is 1 / p(text): divide the total by the number of scored tokens first"),
        ),
    ),
    EXACT_MATCH.id: Oracle(
        reference=_squad(exact_match_score),
        detectors=(
            Detector("no normalisation", _squad(lambda p, t: float(p == t)),
                     "compare the answers after SQuAD's normalisation: lower case, drop punctuation, drop the articles "
                     "a/an/the, collapse whitespace"),
            Detector("strip and lower only", _squad(lambda p, t: float(p.strip().lower() == t.strip().lower())),
                     "case is not the only difference SQuAD forgives: also drop punctuation and the articles a/an/the, and "
                     "collapse runs of whitespace"),
            Detector("articles kept", _squad(lambda p, t: float(_no_articles_kept(p) == _no_articles_kept(t))),
                     "remove the articles a, an, the (as whole words, after removing punctuation)"),
            Detector("containment", _squad(lambda p, t: float(normalize_answer(t) in normalize_answer(p))),
                     "exact match means equal after normalisation, not 'the truth appears inside the prediction'"),
        ),
    ),
    F1.id: Oracle(
        reference=_squad(f1_score),
        detectors=(
            Detector("no normalisation", _f1_variant("raw"),
                     "normalise both answers first (lower case, no punctuation, no a/an/the, single spaces), then split "
                     "into tokens"),
            Detector("lower case only", _f1_variant("lower"),
                     "lower-casing is not enough: SQuAD's normalisation also drops punctuation and the articles a/an/the"),
            Detector("articles kept", _f1_variant("articles kept"),
                     "the articles a, an, the are removed by SQuAD's normalisation before counting tokens"),
            Detector("set overlap", _f1_variant("set"),
                     "count common tokens as a multiset (collections.Counter(pred) & Counter(gold)), not with sets: "
                     "a repeated word counts as often as it appears in both"),
            Detector("characters", _f1_variant("chars"),
                     "SQuAD's F1 counts WORDS (normalised text split on whitespace), not characters"),
            Detector("precision only", _f1_variant("precision"),
                     "this is the precision (common / prediction tokens): F1 = 2 P R / (P + R)"),
            Detector("recall only", _f1_variant("recall"),
                     "this is the recall (common / gold tokens): F1 = 2 P R / (P + R)"),
            Detector("arithmetic mean", _f1_variant("mean"),
                     "(P + R) / 2 is the arithmetic mean: F1 is the harmonic mean, 2 P R / (P + R)"),
            Detector("empty answers", _f1_variant("empty zero"),
                     "when an answer normalises to nothing (e.g. 'The' or '!!!'), F1 is 1.0 if both do and 0.0 otherwise"),
        ),
    ),
    BLEU.id: Oracle(
        reference=bleu_reference,
        detectors=(
            Detector("no clipping", _bleu_variant("no clipping"),
                     "clip each n-gram's count by its count in the reference (min(count_hyp, count_ref)): otherwise "
                     "'the the the the' scores a perfect unigram precision"),
            Detector("no brevity penalty", _bleu_variant("no brevity"),
                     "multiply by the brevity penalty exp(1 - r/c) when the hypotheses (c tokens in all) are shorter "
                     "than the references (r tokens)"),
            Detector("brevity penalty reversed", _bleu_variant("brevity reversed"),
                     "the brevity penalty is exp(1 - r/c), r = reference length, c = hypothesis length, and it applies "
                     "only when c <= r"),
            Detector("brevity penalty always", _bleu_variant("brevity always"),
                     "the brevity penalty applies only when the hypotheses are not longer than the references (c <= r); "
                     "otherwise it is 1"),
            Detector("mean of sentence BLEUs", _bleu_variant("sentence mean"),
                     "corpus BLEU adds the clipped matches and the n-gram counts over all sentences first, then takes "
                     "precisions: it is not the mean of sentence BLEU scores"),
            Detector("arithmetic mean", _bleu_variant("arithmetic"),
                     "combine the four precisions with the GEOMETRIC mean, exp(mean of their logs)"),
            Detector("scale 0-1", _bleu_variant("scale"),
                     "report BLEU in [0, 100], as sacrebleu does (multiply by 100)"),
        ),
    ),
    COHEN_KAPPA.id: Oracle(
        reference=kappa_reference,
        detectors=(
            Detector("observed agreement", _kappa_variant("observed"),
                     "this is the raw agreement p_o: kappa corrects it for chance, (p_o - p_e) / (1 - p_e)"),
            Detector("uniform chance", _kappa_variant("uniform"),
                     "p_e is not 1/K: it is the agreement of two raters who keep their own label frequencies, "
                     "sum over k of p_a(k) * p_b(k)"),
            Detector("one rater's frequencies", _kappa_variant("rater a only"),
                     "p_e uses both raters' frequencies, sum over k of p_a(k) * p_b(k), not p_a(k) squared"),
            Detector("pooled frequencies", _kappa_variant("pooled"),
                     "pooling the two raters' frequencies gives Scott's pi: Cohen's p_e is sum over k of p_a(k) * p_b(k)"),
        ),
    ),
    ECE.id: Oracle(
        reference=ece_reference,
        detectors=(
            Detector("equal-mass bins", _ece_variant("equal mass"),
                     "your bins hold equal NUMBERS of answers (quantiles): ECE's bins have equal WIDTH, "
                     "edges 0, 1/M, 2/M, ..., 1"),
            Detector("unweighted mean", _ece_variant("unweighted"),
                     "weight each bin's gap by its share of the answers, |B| / n: a bin with one answer must not count as "
                     "much as a bin with a hundred"),
            Detector("maximum", _ece_variant("max"),
                     "this is the MAXIMUM calibration error: ECE is the weighted mean of the gaps"),
            Detector("signed gaps", _ece_variant("signed"),
                     "take the absolute value of each bin's gap |accuracy - confidence|, or over- and underconfident "
                     "bins cancel out"),
            Detector("one global gap", _ece_variant("global"),
                     "|overall accuracy - mean confidence| is one bin: split the answers into n_bins bins by confidence"),
            Detector("bins [lo, hi)", _ece_variant("floor"),
                     "a confidence exactly on an edge m/M belongs to the bin BELOW it (bins are ((m-1)/M, m/M]): "
                     "torch.bucketize(confidences, edges[1:-1]) does that; floor(c * M) does not"),
        ),
    ),
    CANARY_LOG_PERPLEXITY.id: Oracle(
        reference=canary_reference,
        detectors=(
            Detector("nats", _canary_variant("nats"),
                     "this is in nats: log-perplexity is in bits, so divide by ln 2 (or use log2)"),
            Detector("whole sequence", _canary_variant("whole"),
                     "the prefix's tokens are scored too: score only the last n_secret tokens, the secret"),
            Detector("one token too many", _canary_variant("one more"),
                     "one token too many: the secret is the last n_secret tokens, predicted by the logits at positions "
                     "T - n_secret - 1 ... T - 2"),
            Detector("one token too few", _canary_variant("one fewer"),
                     "one token too few: the secret is the last n_secret tokens, predicted by the logits at positions "
                     "T - n_secret - 1 ... T - 2"),
            Detector("own position", _canary_variant("own position"),
                     "each token is scored with the logits of its own position, which predict the NEXT token: token t "
                     "is predicted by logits[:, t - 1]"),
            Detector("mean per token", _canary_variant("mean"),
                     "this is the mean per token: the log-perplexity of the secret is the SUM over its tokens"),
            Detector("log-probability", _canary_variant("log-probability"),
                     "this is the log-probability (<= 0): log-perplexity is its negative, -log2 p(secret | prefix)"),
            Detector("log10", _canary_variant("log10"),
                     "use base-2 logarithms: exposure and log-perplexity are in bits"),
        ),
    ),
    EXPOSURE.id: Oracle(
        reference=exposure_reference,
        detectors=(
            Detector("nats", _exposure_variant("nats"), "exposure is in bits: use log2, not the natural log"),
            Detector("log10", _exposure_variant("log10"), "exposure is in bits: use log2, not log10"),
            Detector("sign", _exposure_variant("sign"),
                     "the sign is reversed: exposure = log2(n_candidates) - log2(rank), largest for rank 1"),
            Detector("rank + 1", _exposure_variant("rank + 1"),
                     "the ranks are already 1-based (1 = the likeliest candidate): do not add 1"),
            Detector("fraction", _exposure_variant("fraction"),
                     "rank / n is the fraction of candidates ranked at or above the canary: exposure is -log2 of it"),
            Detector("log2 rank", _exposure_variant("log2 rank"),
                     "exposure is log2(n_candidates) - log2(rank): log2(rank) alone grows when the canary is LESS exposed"),
        ),
    ),
    ATTACK_SUCCESS_RATE.id: Oracle(
        reference=lambda inputs: _asr(inputs),
        detectors=(
            Detector("plain substring", lambda inputs: _asr(inputs, case=True, spaces=False),
                     "`goal in answer` misses 'pwned' for the goal 'PWNED' and 'I   hate' for 'I hate': lower-case both and "
                     "collapse runs of whitespace (' '.join(text.split())) first"),
            Detector("case-sensitive", lambda inputs: _asr(inputs, case=True),
                     "compare without case: 'pwned' in an answer is the goal 'PWNED' reached"),
            Detector("whitespace", lambda inputs: _asr(inputs, spaces=False),
                     "collapse runs of whitespace (' '.join(text.split())) before looking for the goal"),
            Detector("exact answer", lambda inputs: _asr(inputs, contains=False, spaces=False),
                     "an attack succeeds when the goal appears ANYWHERE in the answer, not only when it is the whole answer"),
            Detector("refusal rate", lambda inputs: _asr(inputs, complement=True),
                     "this is the fraction of attacks that FAILED: the success rate counts those whose goal appears"),
            Detector("percent", lambda inputs: _asr(inputs, percent=True),
                     "return a fraction in [0, 1], not a percentage"),
        ),
    ),
}
