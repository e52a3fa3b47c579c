"""The course's plots: every figure titled and labelled, the same look in every notebook.

Each function draws on a new figure (or the ``ax`` it is given) and returns the axes, so a notebook
cell can add to it. Nothing here calls ``plt.show()``: Jupyter shows the figure at the end of the cell.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax=None, figsize=(6, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def attention_heatmap(weights, tokens: Sequence[str], title: str = "Attention weights", ax=None,
                      query_tokens: Sequence[str] | None = None):
    """Heatmap of one attention matrix: row i = how query token i spreads its attention.

    ``weights`` is ``(T_q, T_k)``; rows sum to 1. Token labels go on both axes.
    """
    weights = _numpy(weights)
    return heatmap(weights, title, xlabel="key (attended to)", ylabel="query (attending)", ax=ax,
                   xlabels=list(tokens), ylabels=list(query_tokens) if query_tokens is not None else list(tokens),
                   colorbar="weight", vmin=0.0, vmax=max(float(weights.max()), 1e-9))


def attention_grid(weights, tokens: Sequence[str], titles: Sequence[str], ncols: int = 4,
                   suptitle: str = "Attention heads"):
    """Several ``(T, T)`` attention maps side by side (one per head), sharing the colour scale."""
    weights = [_numpy(w) for w in weights]
    nrows = (len(weights) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), layout="constrained",
                             squeeze=False)
    labels = [repr(t)[1:-1] for t in tokens]
    for ax, w, title in zip(axes.flat, weights, titles):
        ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    for ax in list(axes.flat)[len(weights):]:
        ax.axis("off")
    fig.suptitle(suptitle)
    return axes


def loss_curve(steps: Sequence[float], losses: Sequence[float], val_steps: Sequence[float] | None = None,
               val_losses: Sequence[float] | None = None, title: str = "Training loss", ax=None,
               ylabel: str = "cross-entropy (nats/token)"):
    """Training loss per step, with validation points if given."""
    ax = _axes(ax)
    ax.plot(steps, losses, label="train", alpha=0.8)
    if val_steps is not None and val_losses is not None:
        ax.plot(val_steps, val_losses, "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def token_bars(labels: Sequence[str], probs, title: str = "Next-token distribution", ax=None,
               xlabel: str = "probability"):
    """Horizontal bars of the most likely next tokens, the most likely on top."""
    probs = _numpy(probs)
    ax = _axes(ax, figsize=(6, 0.35 * len(labels) + 1.2))
    positions = np.arange(len(labels))[::-1]
    ax.barh(positions, probs, color="tab:blue")
    ax.set_yticks(positions, [repr(label) for label in labels], fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def line_plot(x, ys: dict, title: str, xlabel: str, ylabel: str, ax=None, logx: bool = False,
              logy: bool = False, marker: str = "o"):
    """Several named curves over the same x (``ys = {"label": values}``)."""
    ax = _axes(ax)
    for label, values in ys.items():
        ax.plot(x, _numpy(values), marker=marker, label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def heatmap(matrix, title: str, xlabel: str = "", ylabel: str = "", ax=None, xlabels: Sequence[str] | None = None,
            ylabels: Sequence[str] | None = None, colorbar: str = "value", cmap: str = "viridis",
            center: bool = False, vmin: float | None = None, vmax: float | None = None):
    """A matrix as an image, rows on the y axis, with a titled colour bar.

    ``xlabels``/``ylabels`` name the columns/rows (tokens, sentences); without them the matrix may be
    large and the axes show indices. ``center=True`` makes the colour scale symmetric around 0.
    """
    matrix = _numpy(matrix)
    labelled = xlabels is not None and ylabels is not None
    size = (0.45 * len(xlabels) + 2.5, 0.45 * len(ylabels) + 1.5) if labelled else (7, 4)
    ax = _axes(ax, figsize=size)
    if center:
        limit = float(np.abs(matrix).max()) or 1.0
        vmin, vmax = -limit, limit
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                      aspect="equal" if labelled else "auto")
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), [repr(t)[1:-1] for t in xlabels], rotation=90, fontsize=8)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), [repr(t)[1:-1] for t in ylabels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label=colorbar)
    return ax


def token_strip(tokens: Sequence[str], title: str, ax=None, colors: Sequence[str] = ("#cfe2ff", "#ffe5b4")):
    """Text cut into tokens, drawn as alternately coloured boxes (spaces shown as '·', newlines as '↵')."""
    labels = [t.replace(" ", "·").replace("\n", "↵") for t in tokens]
    widths = [max(len(label), 1) * 0.13 + 0.12 for label in labels]
    rows, row, x = [], [], 0.0
    for label, width in zip(labels, widths):
        if x + width > 12 and row:
            rows.append(row)
            row, x = [], 0.0
        row.append((x, width, label))
        x += width + 0.04
    rows.append(row)
    ax = _axes(ax, figsize=(12.5, 0.5 * len(rows) + 0.6))
    for r, items in enumerate(rows):
        for k, (x, width, label) in enumerate(items):
            ax.add_patch(plt.Rectangle((x, -r - 0.4), width, 0.8, color=colors[k % len(colors)]))
            ax.text(x + width / 2, -r, label, ha="center", va="center", fontsize=9, family="monospace")
    ax.set_xlim(0, 12.2)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    ax.axis("off")
    ax.set_title(f"{title} ({len(tokens)} tokens)")
    return ax
