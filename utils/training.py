"""Pretraining, shared by notebook 04 and ``benchmarks/pretrain_char.py``.

Why a shared loop: every model in notebook 04 (a causal GPT, a masked-LM encoder, a T5-style
encoder-decoder, the models of the scaling plot) trains with the same ingredients, and only what a
batch is and how its loss is computed change. So the loop takes those two as arguments:

* ``next_batch(step) -> batch``            where the data comes from (``get_batch`` for a GPT);
* ``loss_fn(model, batch) -> loss``        what the objective is (next-token cross-entropy by default).

Everything else is the recipe of GPT-style pretraining: AdamW with weight decay on matrices only,
a learning-rate schedule (``lr_schedule``: warm-up then cosine, ``lr_at`` of notebook 04), gradient
clipping, periodic validation, a progress bar and, in a notebook, a loss curve that redraws as it trains.

This module is shared: it never imports ``utils.pretraining`` (notebook 04's reference solutions,
which the grader's sandbox leaves out while 04 is graded) at the top. Notebook 04 passes the
learner's functions (``train(..., lr_schedule=lr_at)``, ``estimate_loss(..., get_batch=get_batch)``);
only a caller that passes none (a benchmark, a later notebook) gets the course's versions, imported
when called.

>>> tok = CharTokenizer("to be or not to be")
>>> tok.decode(tok.encode("be not"))
'be not'
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


class CharTokenizer:
    """Every distinct character is a token; special tokens (``"[MASK]"``, ``"<extra_id_0>"``) follow.

    The vocabulary is the sorted characters of ``text``, so the same text always gives the same ids.

    >>> tok = CharTokenizer("hello", specials=["[MASK]"])
    >>> tok.chars                     # ids 0..3
    ['e', 'h', 'l', 'o']
    >>> tok.encode("hole")
    [1, 3, 2, 0]
    >>> tok.token_id("[MASK]"), tok.vocab_size
    (4, 5)
    >>> tok.decode([1, 0, 2, 4, 3])   # a special token decodes to its name
    'hel[MASK]o'
    """

    def __init__(self, text: str, specials: Sequence[str] = ()):
        self.chars = sorted(set(text))
        self.specials = list(specials)
        self.itos = self.chars + self.specials
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_id(self, token: str) -> int:
        return self.stoi[token]

    def encode(self, text: str) -> list[int]:
        unknown = sorted(c for c in set(text) if c not in self.stoi)
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)


def char_dataset(max_chars: int | None = None, val_fraction: float = 0.1, specials: Sequence[str] = ()):
    """Character-level Shakespeare: ``(tokenizer, train_ids, val_ids)`` as 1-D LongTensors.

    The split is by position, like nanoGPT's: the first 90 % of the text trains and the last 10 %
    (different plays) validates, so validation measures generalisation to unseen text.
    """
    from .assets import shakespeare_text

    text = shakespeare_text(max_chars)
    tokenizer = CharTokenizer(text, specials)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)   # (N,)
    n_train = int((1 - val_fraction) * len(data))
    return tokenizer, data[:n_train], data[n_train:]


def next_token_loss(model, batch) -> torch.Tensor:
    """The causal objective on a ``(x, y)`` batch: cross-entropy of ``model(x)`` against ``y``."""
    x, y = batch
    logits = model(x)                                                   # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())          # (B*T, V) against (B*T,)


@torch.no_grad()
def estimate_loss(model, data: torch.Tensor, block_size: int, batch_size: int = 32, n_batches: int = 20,
                  seed: int = 1234, loss_fn: Callable = next_token_loss, get_batch: Callable | None = None) -> float:
    """Mean loss over ``n_batches`` windows drawn with a fixed seed: the same windows every call,
    so two models (or two points of one run) are compared on the same text.

    ``get_batch(data, block_size, batch_size, generator)`` draws the windows (notebook 04 passes
    the learner's; by default the course's ``utils.pretraining.get_batch``).
    """
    if get_batch is None:
        from .pretraining import get_batch
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_batches):
        total += float(loss_fn(model, get_batch(data, block_size, batch_size, generator)))
    model.train(was_training)
    return total / n_batches


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.99)) -> torch.optim.AdamW:
    """AdamW that decays matrices (and embeddings) but not biases or normalisation gains, as GPT-2 did."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)  # one kernel for all tensors


def orthogonalize(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately the nearest orthogonal matrix U V^T to G = U S V^T, for a stack (..., m, n) at once.

    Five iterations of a quintic Newton-Schulz polynomial (Jordan et al., 2024) push every singular
    value of G / ||G|| towards 1 (to within about 0.3), using matrix products only, no SVD.

    >>> G = torch.randn(3, 6, 4)
    >>> singular_values = torch.linalg.svdvals(orthogonalize(G))
    >>> bool(((singular_values > 0.6) & (singular_values < 1.3)).all())
    True
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm(dim=(-2, -1), keepdim=True) + 1e-7)                # every singular value now <= 1
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT                                                        # work on the smaller Gram matrix
    for _ in range(steps):
        A = X @ X.mT                                                    # (..., m, m)
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalised: the update of each weight matrix is U V^T of its (Nesterov) momentum.

    Adam scales every number of the gradient separately; Muon changes a whole matrix by the same
    amount in every direction of its singular value decomposition, so the rare directions that the
    gradient barely touches are learned as fast as the dominant ones. For 2-D weights of hidden
    layers only; embeddings, the output layer, biases and gains stay with AdamW (:func:`muon_adamw`).
    Matrices of the same shape are orthogonalised together as one batch.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5):
        super().__init__(params, {"lr": lr, "momentum": momentum, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape: dict = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                buffer = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(p.grad)
                by_shape.setdefault(p.shape, []).append((p, p.grad.add(buffer, alpha=group["momentum"])))
            for (rows, cols), items in by_shape.items():
                updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])  # (n, rows, cols)
                scale = group["lr"] * max(1.0, rows / cols) ** 0.5
                for (p, _), update in zip(items, updates):
                    p.add_(update, alpha=-scale)


class Optimizers:
    """Several optimizers stepped as one, e.g. Muon for the matrices and AdamW for the rest."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def muon_adamw(model: torch.nn.Module, lr: float, muon_lr: float = 0.02, betas=(0.9, 0.99)) -> Optimizers:
    """Muon (peak ``muon_lr``) for the matrices inside ``model.blocks``, AdamW (peak ``lr``) for the rest."""
    matrices = [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]
    chosen = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    return Optimizers(Muon(matrices, lr=muon_lr), torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=0.0, fused=True))


@dataclass
class History:
    """What a run measured: per-step training loss and learning rate, and the validation points."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_val(self) -> float:
        return self.val_losses[-1] if self.val_losses else float("nan")


def train(model: torch.nn.Module, next_batch: Callable[[int], object], *, steps: int, max_lr: float,
          min_lr: float | None = None, warmup: int = 0, seconds: float | None = None, clock_schedule: bool = True,
          loss_fn: Callable = next_token_loss, evaluate: Callable[[], float] | None = None,
          eval_every: int = 0, weight_decay: float = 0.1, betas=(0.9, 0.99), grad_clip: float = 1.0,
          lr_schedule: Callable | None = None, optimizer: str = "adamw", muon_lr: float = 0.02,
          progress: bool = True, live_plot: bool = False, title: str = "Training loss") -> History:
    """Train ``model`` in place for ``steps`` steps (or until ``seconds`` have passed) and return its History.

    With ``seconds`` the schedule runs on the clock: ``total`` becomes the number of steps that fit
    in the budget at the pace so far, so the cosine reaches ``min_lr`` when the time is up, however
    fast the machine is (``steps`` is then only an upper bound). ``clock_schedule=False`` keeps the
    step schedule and only stops at ``seconds``.
    ``lr_schedule(step, warmup, total, max_lr, min_lr)`` gives each step's learning rate (notebook 04
    passes the learner's ``lr_at``; by default the course's ``utils.pretraining.lr_at``).
    ``evaluate()`` (a validation loss) runs every ``eval_every`` steps and once at the end.
    ``optimizer="muon"`` trains the matrices of ``model.blocks`` with :class:`Muon` (peak ``muon_lr``)
    and the rest with AdamW (peak ``max_lr``); the schedule scales both peaks alike.
    """
    from tqdm.auto import tqdm

    if lr_schedule is None:
        from .pretraining import lr_at as lr_schedule
    min_lr = max_lr / 10 if min_lr is None else min_lr
    if optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be 'adamw' or 'muon', not {optimizer!r}")
    optim = adamw(model, max_lr, weight_decay, betas) if optimizer == "adamw" else muon_adamw(model, max_lr, muon_lr, betas)
    for group in optim.param_groups:
        group["peak_lr"] = group["lr"]
    history = History()
    plot = LiveLoss(title) if live_plot else None
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc="training", leave=False)
    for step in bar:
        elapsed = time.perf_counter() - start
        if seconds is not None and elapsed >= seconds:
            break
        total = steps
        if seconds is not None and clock_schedule and step > 0:
            total = min(steps, max(step + 1, warmup + 1, round(step * seconds / elapsed)))  # steps that fit, at this pace
        lr = lr_schedule(step, warmup, total, max_lr, min_lr)
        for group in optim.param_groups:
            group["lr"] = group["peak_lr"] * lr / max_lr
        loss = loss_fn(model, next_batch(step))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)   # one bad batch cannot blow up the weights
        optim.step()
        history.steps.append(step)
        history.losses.append(loss.item())
        history.lrs.append(lr)
        if evaluate is not None and eval_every and step > 0 and step % eval_every == 0:
            history.val_steps.append(step)
            history.val_losses.append(evaluate())
            bar.set_postfix(loss=f"{history.losses[-1]:.3f}", val=f"{history.val_losses[-1]:.3f}")
            if plot:
                plot.update(history)
    history.seconds = time.perf_counter() - start
    if evaluate is not None and (not history.val_steps or history.val_steps[-1] != history.steps[-1]):
        history.val_steps.append(history.steps[-1] if history.steps else 0)
        history.val_losses.append(evaluate())
    if plot:
        plot.update(history)
        plot.close()
    bar.close()
    return history


class LiveLoss:
    """A loss curve that redraws in place in a notebook (one output, updated through its display id)."""

    def __init__(self, title: str = "Training loss"):
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.fig, self.ax = plt.subplots(figsize=(6, 3.5))
        self.title = title
        self.handle = display(self.fig, display_id=True)

    def update(self, history: History) -> None:
        from .plotting import loss_curve

        self.ax.clear()
        loss_curve(history.steps, smooth(history.losses), history.val_steps, history.val_losses,
                   title=self.title, ax=self.ax)
        if self.handle is not None:
            self.handle.update(self.fig)

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.fig)


def smooth(values: Sequence[float], window: int = 20) -> list[float]:
    """Running mean over the last ``window`` values: a noisy per-step loss becomes readable.

    >>> smooth([1.0, 3.0, 5.0], window=2)
    [1.0, 2.0, 4.0]
    """
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
