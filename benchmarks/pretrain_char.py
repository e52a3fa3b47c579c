"""Character-level Shakespeare in 180 seconds: nanoGPT's CPU recipe against notebook 04's configuration.

Both runs train from scratch with ``utils.training.train`` (the baseline ``utils.gpt.GPT``, GPT-2's
architecture; ours ``utils.models.ModernGPT``, see ``OURS`` below) on the same split of our 38-play Shakespeare (first 90 % trains, last 10 % validates), one after
the other in the same process, each with the same wall-clock budget for training. Validation loss
is then measured on the same number of held-out characters (each model at its own context length,
as nanoGPT reports it).

The baseline is nanoGPT's README recipe for a CPU (``config/train_shakespeare_char.py`` with
``--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0``): lr 1e-3, warm-up 100, cosine to 1e-4, AdamW
betas (0.9, 0.99), weight decay 0.1, gradient clip 1.0. It stops after 2,000 steps or at the
budget, whichever comes first.

Target (issue 4): ours <= 1.65 nats/char and at least 0.25 below the baseline.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

BUDGET_SECONDS = 180.0
EVAL_CHARACTERS = 1 << 17          # held-out characters scored per model (131,072)
TARGET = {"ours_at_most": 1.65, "below_baseline_by_at_least": 0.25}

BASELINE = {"name": "nanoGPT CPU recipe", "model": "GPT", "n_layers": 4, "n_heads": 4, "d_model": 128,
            "block_size": 64, "batch_size": 12, "steps": 2000, "optimizer": "adamw", "max_lr": 1e-3, "min_lr": 1e-4,
            "warmup": 100, "clock_schedule": False}
# Same depth and context. What changed: the block (utils.models.ModernGPT: rotary positions, QK-norm,
# ReLU^2, zero-initialised outputs), the optimizer (Muon for the block matrices; its fixed cost per step
# is why the batch grows to 32), the width (96: at this budget a smaller model that sees more characters
# wins), and the schedule (higher peaks, cosine to 0 on the clock).
OURS = {"name": "notebook 04 (ModernGPT + Muon)", "model": "ModernGPT", "n_layers": 4, "n_heads": 4, "d_model": 96,
        "block_size": 64, "batch_size": 32, "steps": 100_000, "optimizer": "muon", "max_lr": 6e-3, "muon_lr": 0.03,
        "min_lr": 0.0, "warmup": 100, "clock_schedule": True}


def train_one(config: dict, tokenizer, train_ids, val_ids, seconds: float, seed: int = 0) -> dict:
    """Train one configuration for at most ``seconds`` and score it on held-out text."""
    from utils import gpt, models
    from utils.pretraining import get_batch
    from utils.training import estimate_loss, train

    torch.manual_seed(seed)
    T, B = config["block_size"], config["batch_size"]
    model = getattr(gpt if config["model"] == "GPT" else models, config["model"])(tokenizer.vocab_size, T, config["d_model"], config["n_layers"], config["n_heads"])
    generator = torch.Generator().manual_seed(seed)
    history = train(model, lambda step: get_batch(train_ids, T, B, generator), steps=config["steps"],
                    seconds=seconds, clock_schedule=config["clock_schedule"], max_lr=config["max_lr"],
                    optimizer=config["optimizer"], muon_lr=config.get("muon_lr", 0.02),
                    min_lr=config["min_lr"], warmup=config["warmup"], betas=(0.9, 0.99), weight_decay=0.1,
                    grad_clip=1.0, progress=False)
    start = time.perf_counter()
    val = estimate_loss(model, val_ids, T, batch_size=32, n_batches=max(1, EVAL_CHARACTERS // (32 * T)))
    return {"config": config, "val_loss": val, "train_seconds": history.seconds, "steps": len(history.steps),
            "train_characters": len(history.steps) * B * T, "final_train_loss": sum(history.losses[-50:]) / 50,
            "eval_seconds": time.perf_counter() - start,
            "parameters": sum(p.numel() for p in model.parameters())}


def cpu_name() -> str:
    """The processor's model name (Linux), for reading a result next to its machine."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def run() -> dict:
    from utils.training import char_dataset

    torch.set_flush_denormal(True)  # denormal floats late in training cost 3-8x per step on x86
    tokenizer, train_ids, val_ids = char_dataset()
    baseline = train_one(BASELINE, tokenizer, train_ids, val_ids, BUDGET_SECONDS)
    ours = train_one(OURS, tokenizer, train_ids, val_ids, BUDGET_SECONDS)
    met = (ours["val_loss"] <= TARGET["ours_at_most"]
           and baseline["val_loss"] - ours["val_loss"] >= TARGET["below_baseline_by_at_least"])
    return {
        "metric": "validation loss after 180 s of training", "unit": "nats/char",
        "value": ours["val_loss"], "baseline": BASELINE["name"], "baseline_value": baseline["val_loss"],
        "config": {"budget_seconds": BUDGET_SECONDS, "eval_characters": EVAL_CHARACTERS,
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_name(),
                   "vocab_size": tokenizer.vocab_size, "train_characters": len(train_ids),
                   "val_characters": len(val_ids)},
        "ours": ours, "baseline_run": baseline,
        "improvement": baseline["val_loss"] - ours["val_loss"], "target": TARGET, "target_met": met,
    }
