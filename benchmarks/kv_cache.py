"""Notebook 05's generate with and without its KV cache: 256 new tokens after a 32-token prompt, greedy, SmolLM2.

The model is the course's Llama (``utils.llama``, SmolLM2-135M-Instruct's weights) and the loop the
course's ``generate`` (``utils.decoding``, the notebook's solution, graded against
``LlamaForCausalLM.generate``). Without the cache every step feeds the whole sequence again, so the
time per token grows with the length; with it, one token per step. Both runs must give the same
tokens. Target (issue 12): speed-up >= 5x.
"""
from __future__ import annotations

import time

import torch

CONFIG = {"prompt_tokens": 32, "new_tokens": 256, "model": "SmolLM2-135M-Instruct (utils.llama)",
          "dtype": "float32", "threads": torch.get_num_threads()}
TARGET_SPEEDUP = 5.0
PROMPT = ("The lighthouse stood at the end of a long, narrow spit of rock, and every night for forty years the old "
          "keeper had climbed its spiral stairs to light the lamp.")


def prompt_ids(tokenizer, n: int) -> torch.Tensor:
    ids = tokenizer(PROMPT * 4, return_tensors="pt").input_ids[:, :n]
    assert ids.shape[1] == n
    return ids


def run() -> dict:
    from utils.assets import smollm2_dir
    from utils.decoding import generate
    from utils.llama import Llama
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    model = Llama.from_pretrained(smollm2_dir())
    ids = prompt_ids(tokenizer, CONFIG["prompt_tokens"])
    n = CONFIG["new_tokens"]
    with torch.no_grad():
        generate(model, ids, 4)                                # warm-up
        start = time.perf_counter()
        cached = generate(model, ids, n, use_cache=True)
        with_cache = time.perf_counter() - start
        start = time.perf_counter()
        uncached = generate(model, ids, n, use_cache=False)
        without = time.perf_counter() - start
    speedup = without / with_cache
    return {
        "metric": "time for 256 new tokens", "unit": "s", "value": with_cache,
        "baseline": "the same generate without the cache", "baseline_value": without,
        "config": CONFIG, "speedup": speedup, "identical": bool(torch.equal(cached, uncached)),
        "tokens_per_second": {"with_cache": n / with_cache, "without": n / without},
        "targets": {"kv_cache.speedup": {"value": speedup, "target": f">= {TARGET_SPEEDUP}",
                                         "met": bool(speedup >= TARGET_SPEEDUP)}},
    }
