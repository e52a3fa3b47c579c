"""The reference solutions of notebook 04 (hidden while it is graded): batches of a token stream and
the learning-rate schedule.

``utils.training`` (the loop every notebook trains with) takes them as arguments, so a notebook can
train with the learner's own versions.
"""
from __future__ import annotations

import math

import torch


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


