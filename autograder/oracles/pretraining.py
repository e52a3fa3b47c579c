"""Notebook 04, trusted side: oracles, known mistakes and the judges of the random exercises.

``causal_lm_loss`` is compared with ``transformers``' ``ForCausalLMLoss`` (value and gradient) and
``lr_at`` with ``transformers``' cosine-with-min-lr schedule. ``mask_tokens``, ``span_corrupt`` and
``get_batch`` are random: each case draws many samples with seeded ``torch.Generator``s, and a
*judge* checks exact invariants on every sample (what a correct answer always satisfies) and
statistics over all of them, each test at significance ALPHA (an exact tail probability, from
``scipy.stats``): a correct implementation fails a case with probability below one in a million,
and "one lucky sample" cannot pass.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..compare import expect_array
from ..manifests.pretraining import CAUSAL_LM_LOSS, GET_BATCH, LR_AT, MASK_TOKENS, SPAN_CORRUPT
from ..spec import Detector, Oracle
from .common import tensor as _t

Z = 5.0  # tolerance of every statistical check, in standard deviations




def _within(observed: float, expected: float, n: int) -> bool:
    """Is a frequency observed over ``n`` Bernoulli trials within Z standard deviations of ``expected``?"""
    sigma = math.sqrt(max(expected * (1 - expected), 1e-12) / max(n, 1))
    return abs(observed - expected) <= Z * sigma + 1e-9


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
    eligible = int((~special).sum())
    n_selected = int(selected.sum())
    rate = n_selected / eligible
    if not _within(rate, p, eligible):
        hint = None
        if _within(rate, 0.8 * p, eligible):
            hint = "only the [MASK]ed 80% are labelled: the 10% random and the 10% unchanged positions are predicted too"
        return (f"{rate:.3f} of the non-special tokens were selected, expected {p} "
                f"(± {Z * math.sqrt(p * (1 - p) / eligible):.3f})", hint)
    is_mask = replaced == mask_id
    unchanged = replaced == original[selected]
    # A random replacement is drawn from the whole vocabulary, so it may hit [MASK] or the original.
    expected = {"[MASK]": 0.8 + 0.1 / V, "unchanged": 0.1 + 0.1 / V, "random": 0.1 * (1 - 2 / V)}
    observed = {"[MASK]": is_mask.mean(), "unchanged": (unchanged & ~is_mask).mean(), "random": (~unchanged & ~is_mask).mean()}
    for name, want in expected.items():
        if not _within(float(observed[name]), want, n_selected):
            hint = None
            if observed["[MASK]"] > 0.99:
                hint = "every selected token became [MASK]: BERT replaces 80% with [MASK], 10% with a random token and keeps 10%"
            elif _within(float(observed["random"]), 0.2 * (1 - 1 / V), n_selected):
                hint = ("of the 20% not masked, half become random and half stay: draw the 50% among the remaining "
                        "positions (0.5 of 20%), not 10% of all of them")
            return (f"of the selected tokens, {observed[name]:.3f} are {name}, expected {want:.3f}", hint)
    return None, None


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """T5's arithmetic: how many tokens are noise, in how many spans (at least one of each kind).

    >>> span_counts(64, 0.15, 3.0)
    (10, 3)
    """
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)
    return n_noise, min(n_spans, n_noise, length - n_noise)


def _noise_mask(length, n_noise, n_spans, rng):
    """T5's random_spans_noise_mask in NumPy: kept and noise spans alternate, starting with kept ones."""
    def split(total):  # total items into n_spans non-empty parts, uniformly over the compositions
        cuts = np.sort(rng.choice(np.arange(1, total), n_spans - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [total]]))
    kept, noise = split(length - n_noise), split(n_noise)
    return np.concatenate([np.r_[np.zeros(k, bool), np.ones(n, bool)] for k, n in zip(kept, noise)])


@functools.lru_cache(maxsize=16)
def _noise_profile(length, n_noise, n_spans):
    """How often each position is noise under the contract (Monte Carlo, 4,000 draws, fixed seed)."""
    rng = np.random.default_rng(0)
    return np.mean([_noise_mask(length, n_noise, n_spans, rng) for _ in range(4_000)], axis=0)


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
    masks = np.zeros((draws, L), bool)
    for d, (enc, tgt) in enumerate(zip(got["encoder_input"], got["decoder_target"])):
        is_sentinel = np.isin(enc, sentinels)
        if not np.array_equal(enc[is_sentinel], sentinels[:n_spans]):
            return (f"draw {d}: the sentinels in encoder_input are {enc[is_sentinel][:8].tolist()}, expected "
                    f"{sentinels[:n_spans].tolist()}", "span i is replaced by ONE sentinel, sentinel_ids[i], in order")
        if is_sentinel[0] or (is_sentinel[1:] & is_sentinel[:-1]).any():
            return (f"draw {d}: two spans touch (or the first token is noise)",
                    "kept and noise spans alternate, starting with a kept span, so spans never touch")
        tgt_sentinel = np.isin(tgt, sentinels)
        if not np.array_equal(tgt[tgt_sentinel], sentinels[:n_spans + 1]) or not tgt_sentinel[0] or not tgt_sentinel[-1]:
            return (f"draw {d}: decoder_target {tgt[:12].tolist()}... does not read <s0> span0 <s1> span1 ... <s{n_spans}>",
                    "the target is each span after its sentinel, closed by the next sentinel (T5's '<X> for inviting <Y> last <Z>')")
        cuts = np.flatnonzero(tgt_sentinel)
        spans = [tgt[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:])]
        if any(len(span) == 0 for span in spans):
            return f"draw {d}: an empty span in decoder_target", "every noise span holds at least one token"
        rebuilt, mask = [], []
        for token in enc:
            if token in sentinels:
                span = spans[int(np.flatnonzero(sentinels == token)[0])]
                rebuilt.extend(span.tolist())
                mask.extend([True] * len(span))
            else:
                rebuilt.append(int(token))
                mask.append(False)
        if rebuilt != ids.tolist():
            return (f"draw {d}: putting the spans back in place of their sentinels does not give input_ids back",
                    "the kept tokens stay in order, and each span in the target holds exactly the tokens its sentinel replaced")
        masks[d] = mask
    distinct = len({m.tobytes() for m in masks})
    possible = math.comb(L - n_noise - 1, n_spans - 1) * math.comb(n_noise - 1, n_spans - 1)  # all equally likely
    expected_distinct = possible * (1 - (1 - 1 / possible) ** draws)
    if distinct < 0.9 * expected_distinct:
        return (f"only {distinct} different noise masks in {draws} draws",
                "the spans must be random: draw their lengths with the generator")
    deviation = float(np.abs(masks.mean(0) - _noise_profile(L, n_noise, n_spans)).mean())
    sigma = math.sqrt(n_noise / L * (1 - n_noise / L) / draws)
    if deviation > 0.8 * sigma + Z * sigma / math.sqrt(L) + 0.01:
        return (f"where the noise falls differs from the contract's random spans (mean deviation {deviation:.3f} per position)",
                "split the noise tokens into n_spans random non-empty lengths and the kept tokens likewise, then alternate them")
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
    n_starts = N - T                                   # valid starts: 0 .. N - T - 1
    counts = np.bincount(starts, minlength=n_starts)
    if counts[-1] == 0:
        return (f"the last valid start ({n_starts - 1}) was never drawn in {len(starts)} windows",
                "torch.randint's upper bound is exclusive: draw starts with torch.randint(len(data) - block_size, ...)")
    expected = len(starts) / n_starts
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = n_starts - 1
    if chi2 > dof + Z * math.sqrt(2 * dof):
        return (f"the starts are not uniform (chi-square {chi2:.0f} with {dof} degrees of freedom)",
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
