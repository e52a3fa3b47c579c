"""The reference solutions of notebook 04 (hidden while it is graded): batches of a token stream,
the learning-rate schedule, the causal loss, BERT's masking and T5's span corruption.

Notebook 04's demos fall back on them (``autograder.use``) when a learner's version does not pass
its self-check yet. ``utils.training`` (the loop every notebook trains with) takes the batches and
the schedule as arguments, so a notebook trains with the learner's own versions; it never imports
this module at the top (the grader's sandbox leaves it out while notebook 04 is graded).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None):
    """``batch_size`` random windows of a 1-D token tensor: inputs ``x`` and next-token targets ``y``.

    Every start in ``[0, len(data) - block_size - 1]`` is equally likely; ``y`` is ``x`` one step on.

    >>> x, y = get_batch(torch.arange(10), block_size=4, batch_size=2, generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all()), bool((y - x == 1).all())
    (torch.Size([2, 4]), True, True)
    """
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size)                                                  # (T,)
    index = starts[:, None] + offsets                                                   # (B, T)
    return data[index], data[index + 1]


def lr_at(step: int, warmup: int, total: int, max_lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to ``max_lr`` over ``warmup`` steps, then half a cosine down to ``min_lr``
    at ``total``; ``min_lr`` after that. The same numbers as ``transformers``'
    ``get_cosine_with_min_lr_schedule_with_warmup``.

    >>> [round(lr_at(s, warmup=2, total=6, max_lr=1.0, min_lr=0.1), 3) for s in range(8)]
    [0.0, 0.5, 1.0, 0.868, 0.55, 0.232, 0.1, 0.1]
    """
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)                # 0 -> 1
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, as Hugging Face causal LMs compute it from ``labels=input_ids``.

    ``logits`` (B, T, V) at position t are scored against ``input_ids`` (B, T) at t + 1; targets
    equal to -100 (padding) are left out of the mean.

    >>> causal_lm_loss(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]))
    tensor(1.3863)
    """
    predictions = logits[:, :-1, :]                                    # (B, T-1, V)
    targets = input_ids[:, 1:]                                         # (B, T-1)
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=-100)


def mask_tokens(input_ids: torch.Tensor, mask_token_id: int, vocab_size: int, mlm_probability: float = 0.15,
                generator: torch.Generator | None = None, special_token_ids=()):
    """BERT's masking: ``(inputs, labels)`` shaped like ``input_ids`` (which is not modified).

    Each non-special token is chosen with probability ``mlm_probability``; a chosen token becomes
    ``mask_token_id`` (80 %), a uniformly random id in ``[0, vocab_size)`` (10 %) or stays (10 %).
    ``labels`` holds the original token at chosen positions and -100 elsewhere.

    >>> inputs, labels = mask_tokens(torch.tensor([5, 6, 7, 0]), 9, 10, 1.0, torch.Generator().manual_seed(0), (0,))
    >>> labels.tolist(), inputs.tolist()
    ([5, 6, 7, -100], [9, 9, 9, 0])
    """
    special = torch.isin(input_ids, torch.tensor(list(special_token_ids), dtype=input_ids.dtype))
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator)             # decides each chosen token's fate
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(chosen & (draw < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return inputs, labels


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """T5's arithmetic: how many tokens are noise, in how many spans (at least one of each kind).

    >>> span_counts(64, 0.15, 3.0)
    (10, 3)
    """
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)
    return n_noise, min(n_spans, n_noise, length - n_noise)


def span_corrupt(input_ids: torch.Tensor, noise_density: float = 0.15, mean_span_length: float = 3.0,
                 sentinel_ids=(), generator: torch.Generator | None = None):
    """T5's span corruption of one sequence (``random_spans_noise_mask``): ``(encoder_input, decoder_target)``.

    The sequence is cut into alternating kept and noise spans, starting with a kept one, whose
    lengths are uniformly random compositions (``span_counts`` gives how many tokens and spans).
    Noise span i becomes ``sentinel_ids[i]`` in the encoder input; the target lists each span after
    its sentinel and ends with ``sentinel_ids[n_spans]``.

    >>> enc, dec = span_corrupt(torch.arange(6), 0.5, 3.0, [90, 91], torch.Generator().manual_seed(0))
    >>> enc.tolist(), dec.tolist()
    ([0, 1, 2, 90], [90, 3, 4, 5, 91])
    """
    L = len(input_ids)
    n_noise, n_spans = span_counts(L, noise_density, mean_span_length)

    def random_lengths(total):                                         # n_spans non-empty parts of `total`
        cuts = sorted((torch.randperm(total - 1, generator=generator)[: n_spans - 1] + 1).tolist())
        edges = [0, *cuts, total]                                       # n_spans - 1 distinct cuts in 1 .. total-1
        return [end - begin for begin, end in zip(edges[:-1], edges[1:])]

    kept_lengths, noise_lengths = random_lengths(L - n_noise), random_lengths(n_noise)
    ids = input_ids.tolist()
    encoder, decoder, position = [], [], 0
    for i, (kept, noise) in enumerate(zip(kept_lengths, noise_lengths)):
        encoder += ids[position: position + kept] + [sentinel_ids[i]]
        position += kept
        decoder += [sentinel_ids[i]] + ids[position: position + noise]
        position += noise
    decoder.append(sentinel_ids[n_spans])
    return torch.tensor(encoder), torch.tensor(decoder)
