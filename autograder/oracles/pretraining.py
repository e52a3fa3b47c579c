"""Notebook 04, trusted side: oracles, known mistakes and the judges of the random exercises.

``causal_lm_loss`` is compared with ``transformers``' ``ForCausalLMLoss`` (value and gradient) and
``lr_at`` with ``transformers``' cosine-with-min-lr schedule. ``mask_tokens``, ``span_corrupt`` and
``get_batch`` are random: each case draws many samples with seeded ``torch.Generator``s, and a
*judge* checks exact invariants on every sample (what a correct answer always satisfies) and
statistics over all of them with exact binomial tail probabilities (``scipy.stats.binom``), the
tests of one case Bonferroni-corrected to a total significance of ``ALPHA`` = 1e-6:

* ``mask_tokens``: the number of chosen tokens, and of [MASK] / unchanged / random among them,
  each against its exact binomial law (4 tests at ALPHA / 4);
* ``span_corrupt``: the lengths of the first and last kept and noise spans against the exact
  marginal law of one part of a uniform random composition (``composition_cdf``), through events
  {length <= j} at about the quartiles (up to 12 tests);
* ``get_batch``: how often each valid start was drawn, Binomial(windows, 1 / n_starts) (one test
  per start).

So a correct implementation fails a case with probability at most one in a million
(``tests/test_pretraining.py`` grades the references under 1,000 secrets), and "one lucky sample"
cannot pass.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..compare import expect_array
from ..manifests.pretraining import CAUSAL_LM_LOSS, GET_BATCH, LR_AT, MASK_TOKENS, SPAN_CORRUPT
from ..spec import Detector, Oracle
from .common import tensor as _t

ALPHA = 1e-6  # per case: a correct implementation fails a case with at most this probability


def binomial_p(k, n, p):
    """Two-sided p-value of ``k`` successes in ``n`` Bernoulli(``p``) trials: twice the smaller exact tail.

    Exact (``scipy.stats.binom``) and never below the true tail probability, so rejecting at
    ``p_value < a`` fails a correct implementation with probability at most ``a``. Vectorised.

    >>> round(float(binomial_p(50, 100, 0.5)), 3), float(binomial_p(0, 100, 0.5)) < 1e-29
    (1.0, True)
    """
    from scipy.stats import binom

    k, n, p = np.asarray(k), np.asarray(n), np.asarray(p, dtype=float)
    lower, upper = binom.cdf(k, n, p), binom.sf(k - 1, n, p)          # P(K <= k), P(K >= k)
    return np.minimum(1.0, 2 * np.minimum(lower, upper))


def _with_grad(loss_of):
    def outputs(inputs):
        logits = _t(inputs, "logits").requires_grad_(True)
        loss = loss_of(logits, _t(inputs, "input_ids"))
        loss.backward()
        return {"loss": loss.detach(), "grad": logits.grad}
    return outputs


@_with_grad
def causal_reference(logits, ids):
    from transformers.loss.loss_utils import ForCausalLMLoss  # the loss every HF causal LM uses

    return ForCausalLMLoss(logits, ids, vocab_size=logits.shape[-1])


@_with_grad
def _no_shift(logits, ids):
    return F.cross_entropy(logits.flatten(0, 1), ids.flatten())


@_with_grad
def _shift_backwards(logits, ids):
    return F.cross_entropy(logits[:, 1:].flatten(0, 1), ids[:, :-1].flatten())


@_with_grad
def _padding_counted(logits, ids):
    targets = ids[:, 1:].clamp(min=0)         # -100 turned into a real token id
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())


@_with_grad
def _mean_of_sequence_means(logits, ids):
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    real = (ids[:, 1:] != -100).float()
    return ((per_token * real).sum(1) / real.sum(1)).mean()


@_with_grad
def _summed(logits, ids):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")


def judge_mask(inputs, got):
    ids = np.asarray(inputs["input_ids"])
    draws = int(inputs["draws"])
    V, mask_id, p = int(inputs["vocab_size"]), int(inputs["mask_token_id"]), float(inputs["mlm_probability"])
    shape = (draws,) + ids.shape
    for key in ("inputs", "labels"):
        reason = expect_array(got, key, "int", shape)
        if reason:
            return reason, None
    for key in ("same_seed_same_output", "input_untouched"):
        reason = expect_array(got, key, "bool", ())
        if reason:
            return reason, None
    if not got["input_untouched"]:
        return "input_ids was changed in place", "clone input_ids before writing [MASK] into it (inputs = input_ids.clone())"
    if not got["same_seed_same_output"]:
        return ("two calls with generators seeded alike gave different outputs",
                "draw every random number from `generator` (torch.rand(..., generator=generator)), not from the global RNG")
    inp, lab = got["inputs"], got["labels"]
    original = np.broadcast_to(ids, shape)
    selected = lab != -100
    special = np.isin(original, np.asarray(inputs["special_token_ids"]))
    if (selected & special).any():
        return (f"special tokens were selected for prediction {int((selected & special).sum())} times",
                "never mask special tokens ([CLS], [PAD], ...): exclude positions whose id is in special_token_ids")
    if not np.array_equal(lab[selected], original[selected]):
        if ((lab == mask_id) & selected).any():
            return "labels hold [MASK] ids", "labels keep the ORIGINAL token at each selected position (what the model must recover)"
        return "labels at selected positions are not the original tokens", "labels = input_ids at selected positions, -100 elsewhere"
    if not np.array_equal(inp[~selected], original[~selected]):
        changed = int((inp[~selected] != original[~selected]).sum())
        return (f"{changed} positions were changed but their label is -100",
                "every position you change must be predicted: its label is the original token, not -100")
    replaced = inp[selected]
    if ((replaced < 0) | (replaced >= V)).any():
        return "some replacements are not token ids in [0, vocab_size)", "random replacements come from torch.randint(vocab_size, ...)"
    # Four exact binomial tests (Bonferroni: each at ALPHA / 4). Every eligible token is chosen
    # independently with probability p; given the choice, its fate is drawn independently too.
    level = ALPHA / 4
    eligible = int((~special).sum())
    n_selected = int(selected.sum())
    if binomial_p(n_selected, eligible, p) < level:
        hint = None
        if binomial_p(n_selected, eligible, 0.8 * p) >= level:
            hint = "only the [MASK]ed 80% are labelled: the 10% random and the 10% unchanged positions are predicted too"
        return (f"{n_selected} of {eligible} non-special tokens ({n_selected / eligible:.3f}) were selected, expected "
                f"a fraction {p} (exact binomial test: p-value below {level:.1e})", hint)
    is_mask = replaced == mask_id
    unchanged = replaced == original[selected]
    # A random replacement is drawn from the whole vocabulary, so it may hit [MASK] or the original.
    expected = {"[MASK]": 0.8 + 0.1 / V, "unchanged": 0.1 + 0.1 / V, "random": 0.1 * (1 - 2 / V)}
    observed = {"[MASK]": int(is_mask.sum()), "unchanged": int((unchanged & ~is_mask).sum()),
                "random": int((~unchanged & ~is_mask).sum())}
    for name, want in expected.items():
        if binomial_p(observed[name], n_selected, want) < level:
            hint = None
            if observed["[MASK]"] == n_selected:
                hint = "every selected token became [MASK]: BERT replaces 80% with [MASK], 10% with a random token and keeps 10%"
            elif binomial_p(observed["random"], n_selected, 0.2 * (1 - 1 / V)) >= level:
                hint = ("of the 20% not masked, half become random and half stay: draw the 50% among the remaining "
                        "positions (0.5 of 20%), not 10% of all of them")
            return (f"of the {n_selected} selected tokens, {observed[name]} ({observed[name] / n_selected:.3f}) are "
                    f"{name}, expected a fraction {want:.3f} (exact binomial test: p-value below {level:.1e})", hint)
    return None, None


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """T5's arithmetic: how many tokens are noise, in how many spans (at least one of each kind).

    >>> span_counts(64, 0.15, 3.0)
    (10, 3)
    """
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)
    return n_noise, min(n_spans, n_noise, length - n_noise)


def composition_cdf(total: int, parts: int) -> np.ndarray:
    """Exact law of one part of a uniformly random composition of ``total`` into ``parts`` positive parts.

    Returns F with F[j] = P(part <= j), j = 0 .. total. Every part has this law (they are
    exchangeable): P(part = j) = C(total - j - 1, parts - 2) / C(total - 1, parts - 1).

    >>> composition_cdf(4, 2).tolist()     # 4 = 1+3, 2+2, 3+1: each first part has probability 1/3
    [0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 1.0]
    """
    if parts == 1:
        return (np.arange(total + 1) >= total).astype(float)
    pmf = [math.comb(total - j - 1, parts - 2) / math.comb(total - 1, parts - 1) if 1 <= j <= total - parts + 1 else 0.0
           for j in range(total + 1)]
    return np.minimum(np.cumsum(pmf), 1.0)


def _thresholds(cdf: np.ndarray) -> list[int]:
    """Cut points j whose event {part <= j} is closest to probabilities 1/4, 1/2, 3/4 (none if degenerate)."""
    inner = [j for j in range(len(cdf)) if 0.0 < cdf[j] < 1.0]
    chosen = {min(inner, key=lambda j: abs(cdf[j] - q)) for q in (0.25, 0.5, 0.75)} if inner else set()
    return sorted(chosen)


def _span_lengths_fast(ids, enc, tgt, n_spans, sentinels):
    """Every draw's kept and noise span lengths, (draws, n_spans) each, if every draw meets the
    contract exactly (checked for all draws at once), else None."""
    draws, L = len(enc), len(ids)
    is_s, tgt_s = np.isin(enc, sentinels), np.isin(tgt, sentinels)            # (draws, W)
    if not ((is_s.sum(1) == n_spans).all() and (tgt_s.sum(1) == n_spans + 1).all()):
        return None
    if not ((enc[is_s].reshape(draws, n_spans) == sentinels[:n_spans]).all()
            and (tgt[tgt_s].reshape(draws, n_spans + 1) == sentinels[:n_spans + 1]).all()):
        return None
    if is_s[:, 0].any() or not is_s[:, -1].all() or (is_s[:, 1:] & is_s[:, :-1]).any():
        return None
    if not (tgt_s[:, 0].all() and tgt_s[:, -1].all()) or (tgt_s[:, 1:] & tgt_s[:, :-1]).any():
        return None
    places = np.nonzero(is_s)[1].reshape(draws, n_spans)                       # sentinel columns in enc
    cuts = np.nonzero(tgt_s)[1].reshape(draws, n_spans + 1)                    # sentinel columns in tgt
    kept = np.diff(np.concatenate([np.full((draws, 1), -1), places], 1), axis=1) - 1
    noise = np.diff(cuts, axis=1) - 1
    masks = np.repeat(np.tile([False, True], draws * n_spans), np.stack([kept, noise], 2).ravel()).reshape(draws, L)
    rebuilt = np.empty((draws, L), enc.dtype)
    rebuilt[masks] = tgt[~tgt_s]                                               # the spans, back in place
    rebuilt[~masks] = enc[~is_s]                                               # the kept tokens
    return (kept, noise) if (rebuilt == ids).all() else None


def _first_broken_draw(ids, encoder_inputs, decoder_targets, n_spans, sentinels):
    """(reason, hint) for the first draw that breaks the contract, checked one rule at a time."""
    for d, (enc, tgt) in enumerate(zip(encoder_inputs, decoder_targets)):
        is_sentinel = np.isin(enc, sentinels)
        if not np.array_equal(enc[is_sentinel], sentinels[:n_spans]):
            return (f"draw {d}: the sentinels in encoder_input are {enc[is_sentinel][:8].tolist()}, expected "
                    f"{sentinels[:n_spans].tolist()}", "span i is replaced by ONE sentinel, sentinel_ids[i], in order")
        if is_sentinel[0] or (is_sentinel[1:] & is_sentinel[:-1]).any():
            return (f"draw {d}: two spans touch (or the first token is noise)",
                    "kept and noise spans alternate, starting with a kept span, so spans never touch")
        if not is_sentinel[-1]:
            return (f"draw {d}: encoder_input ends with kept tokens",
                    "the recipe alternates kept span 0, noise span 0, ..., kept span n-1, noise span n-1: "
                    "the sequence starts with kept tokens and ends with noise, so encoder_input ends with a sentinel")
        tgt_sentinel = np.isin(tgt, sentinels)
        if not np.array_equal(tgt[tgt_sentinel], sentinels[:n_spans + 1]) or not tgt_sentinel[0] or not tgt_sentinel[-1]:
            return (f"draw {d}: decoder_target {tgt[:12].tolist()}... does not read <s0> span0 <s1> span1 ... <s{n_spans}>",
                    "the target is each span after its sentinel, closed by the next sentinel")
        cuts = np.flatnonzero(tgt_sentinel)
        spans = [tgt[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:])]
        if any(len(span) == 0 for span in spans):
            return f"draw {d}: an empty span in decoder_target", "every noise span holds at least one token"
        pieces = np.split(enc, np.flatnonzero(is_sentinel))  # kept span 0, then sentinel i + kept span i+1, ...
        rebuilt = np.concatenate([pieces[0]] + [np.concatenate([span, piece[1:]]) for span, piece in zip(spans, pieces[1:])])
        if not np.array_equal(rebuilt, ids):
            return (f"draw {d}: putting the spans back in place of their sentinels does not give input_ids back",
                    "the kept tokens stay in order, and each span in the target holds exactly the tokens its sentinel replaced")
    return "the draws do not follow the contract", None


def judge_span(inputs, got):
    ids = np.asarray(inputs["input_ids"])
    L, draws = len(ids), int(inputs["draws"])
    n_noise, n_spans = span_counts(L, float(inputs["noise_density"]), float(inputs["mean_span_length"]))
    sentinels = np.asarray(inputs["sentinel_ids"])
    counts = f"{L} tokens at noise_density {float(inputs['noise_density'])} give {n_noise} noise tokens in {n_spans} spans"
    for key, width in (("encoder_input", L - n_noise + n_spans), ("decoder_target", n_noise + n_spans + 1)):
        reason = expect_array(got, key, "int", (draws, width))
        if reason:
            return reason, f"{counts}: encoder_input has {L - n_noise + n_spans} ids, decoder_target {n_noise + n_spans + 1}"
    lengths = _span_lengths_fast(ids, got["encoder_input"], got["decoder_target"], n_spans, sentinels)
    if lengths is None:                                      # some draw breaks the contract: find it and say how
        reason, hint = _first_broken_draw(ids, got["encoder_input"], got["decoder_target"], n_spans, sentinels)
        return reason, hint
    kept_lengths, noise_lengths = lengths
    masks = np.repeat(np.tile([False, True], draws * n_spans),                            # (draws, L)
                      np.stack([kept_lengths, noise_lengths], 2).ravel()).reshape(draws, L)
    # Statistics: under the contract the kept lengths are a uniform composition of L - n_noise into
    # n_spans parts and the noise lengths one of n_noise, independent of each other and across draws.
    # The first and last span of each kind (where the first noise starts, where the last one ends)
    # follow `composition_cdf` exactly: a binomial test per event {length <= j}, Bonferroni.
    events = []
    for kind, lengths, total in (("kept", kept_lengths, L - n_noise), ("noise", noise_lengths, n_noise)):
        cdf = composition_cdf(total, n_spans)
        for which, column in (("first", 0), ("last", n_spans - 1)):
            if which == "last" and n_spans == 1:
                continue
            for j in _thresholds(cdf):
                events.append((f"the {which} {kind} span", j, int((lengths[:, column] <= j).sum()), cdf[j]))
    if not events:
        return None, None
    level = ALPHA / len(events)
    p_values = binomial_p([k for *_, k, _ in events], draws, [q for *_, q in events])
    worst = int(np.argmin(p_values))
    if p_values[worst] < level:
        name, j, k, q = events[worst]
        if len({m.tobytes() for m in masks}) == 1:
            hint = "the spans must be random: draw their lengths with the generator (every draw gave the same noise mask)"
        else:
            hint = ("split the noise tokens into n_spans random non-empty lengths and the kept tokens likewise, each "
                    "uniformly (n_spans - 1 distinct cut points drawn at random), then alternate them")
        return (f"{name} had at most {j} tokens in {k} of {draws} draws; under random spans the expected fraction is "
                f"{q:.3f} (exact binomial test: p-value {p_values[worst]:.1e} < {level:.1e})", hint)
    return None, None


def judge_batch(inputs, got):
    data = np.asarray(inputs["data"])
    N, T, B, draws = len(data), int(inputs["block_size"]), int(inputs["batch_size"]), int(inputs["draws"])
    for key in ("x", "y"):
        reason = expect_array(got, key, "int", (draws, B, T))
        if reason:
            return reason, "x and y are both (batch_size, block_size) LongTensors"
    for key in ("same_seed_same_output", "data_untouched"):
        reason = expect_array(got, key, "bool", ())
        if reason:
            return reason, None
    if not got["data_untouched"]:
        return "data was changed in place", None
    if not got["same_seed_same_output"]:
        return ("two calls with generators seeded alike gave different batches",
                "draw the starts with torch.randint(..., generator=generator)")
    x, y = got["x"].reshape(-1, T), got["y"].reshape(-1, T)
    if ((x < 0) | (x >= N)).any():
        return "x holds values that are not in data", None
    position = np.argsort(data)                        # token value -> where it sits in data
    starts = position[x[:, 0]]                         # (draws*B,)
    windows = starts[:, None] + np.arange(T)           # (draws*B, T)
    if (windows >= N).any() or not np.array_equal(x, data[np.minimum(windows, N - 1)]):
        return "a row of x is not a contiguous window of data", "x[b] = data[i : i + block_size] for a random start i"
    if np.array_equal(y, x):
        return "y equals x", "y holds the NEXT tokens: data[i + 1 : i + 1 + block_size]"
    if (windows + 1 >= N).any() or not np.array_equal(y, data[np.minimum(windows + 1, N - 1)]):
        return "y is not x shifted by one token", "y[b] = data[i + 1 : i + 1 + block_size], the same start i as x[b]"
    # Every start is equally likely: the count of each is Binomial(windows, 1 / n_starts), exactly.
    # One two-sided binomial test per start, Bonferroni over the starts.
    n_starts = N - T                                   # valid starts: 0 .. N - T - 1
    counts = np.bincount(starts, minlength=n_starts)
    level = ALPHA / n_starts
    p_values = binomial_p(counts, len(starts), 1.0 / n_starts)
    if p_values.min() < level:
        worst = int(np.argmin(p_values))
        others_uniform = n_starts > 1 and binomial_p(counts[:-1], len(starts), 1.0 / (n_starts - 1)).min() >= level
        if counts[-1] == 0 and others_uniform:
            return (f"the last valid start ({n_starts - 1}) was never drawn in {len(starts)} windows",
                    "torch.randint's upper bound is exclusive: draw starts with torch.randint(len(data) - block_size, ...)")
        return (f"the starts are not uniform: start {worst} was drawn {counts[worst]} times in {len(starts)} windows, "
                f"expected about {len(starts) / n_starts:.1f} (exact binomial test: p-value {p_values[worst]:.1e} < {level:.1e})",
                "every start in [0, len(data) - block_size) must be equally likely")
    return None, None


def _schedule(lr_of):
    def outputs(inputs):
        args = (int(inputs["warmup"]), int(inputs["total"]), float(inputs["max_lr"]), float(inputs["min_lr"]))
        return {"lr": np.array([lr_of(int(step), *args) for step in inputs["steps"]], dtype=np.float64)}
    return outputs


@_schedule
def lr_reference(step, warmup, total, max_lr, min_lr):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    if step >= total:
        return min_lr
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr=min_lr)
    return max_lr * schedule.lr_lambdas[0](step)


def _cosine(step, warmup, total, max_lr, min_lr, *, offset=True, floor=True, shifted_warmup=False):
    if step < warmup:
        return max_lr * ((step + 1) if shifted_warmup else step) / warmup
    if step >= total:
        return min_lr if floor else 0.0
    progress = (step - warmup) / (total - warmup) if offset else step / total
    low = min_lr if floor else 0.0
    return low + (max_lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


ORACLES = {
    CAUSAL_LM_LOSS.id: Oracle(
        reference=causal_reference,
        detectors=(
            Detector("no shift", _no_shift,
                     "logits[:, t] was scored against input_ids[:, t] (itself): position t predicts the NEXT token, "
                     "so compare logits[:, :-1] with input_ids[:, 1:]"),
            Detector("shift backwards", _shift_backwards,
                     "the shift goes the wrong way: use logits[:, :-1] against input_ids[:, 1:], not logits[:, 1:] "
                     "against input_ids[:, :-1]"),
            Detector("padding counted", _padding_counted,
                     "positions labelled -100 (padding) were scored: leave them out, e.g. F.cross_entropy(..., ignore_index=-100)"),
            Detector("mean of sequence means", _mean_of_sequence_means,
                     "you averaged each sequence, then the sequences: average over all real target tokens at once, "
                     "so a short sequence does not weigh as much as a long one"),
            Detector("sum", _summed, "this is the sum over tokens; the loss is the mean over the real target tokens"),
        ),
    ),
    MASK_TOKENS.id: Oracle(
        judge=judge_mask,
    ),
    SPAN_CORRUPT.id: Oracle(
        judge=judge_span,
    ),
    GET_BATCH.id: Oracle(
        judge=judge_batch,
    ),
    LR_AT.id: Oracle(
        reference=lr_reference,
        detectors=(
            Detector("cosine ignores the warm-up", _schedule(lambda *a: _cosine(*a, offset=False)),
                     "the cosine must start where the warm-up ends: progress = (step - warmup) / (total - warmup)"),
            Detector("decays to zero", _schedule(lambda *a: _cosine(*a, floor=False)),
                     "the cosine ends at min_lr, not 0: lr = min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * progress))"),
            Detector("warm-up off by one", _schedule(lambda *a: _cosine(*a, shifted_warmup=True)),
                     "the warm-up starts at 0 on step 0 (max_lr * step / warmup), as transformers' schedules do"),
            Detector("no warm-up", _schedule(lambda s, w, t, hi, lo: _cosine(s, 0, t, hi, lo)),
                     "steps before `warmup` must ramp up linearly from 0 to max_lr"),
        ),
    ),
}
