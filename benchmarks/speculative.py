"""Notebook 05's speculative decoding against plain greedy decoding, on a copy-heavy prompt, SmolLM2.

The prompt asks SmolLM2-135M-Instruct (the course's Llama, ``utils.llama``) to correct the spelling of
a passage (it writes the passage out again, up to EOS);
the draft is prompt lookup (``utils.decoding.PromptLookup``: the token that followed the last
earlier occurrence of the current 3 tokens, no weights), k = 6 proposals per round. Both sides are
the course's cached loops (``utils.decoding``), timed in turn; the output must be identical to plain
greedy decoding. For comparison, an early-exit draft (the first 8 of 30 layers) on the same prompt.
Targets (issue 12): speed-up >= 1.5x, every token identical.
"""
from __future__ import annotations

import time

import torch

from .common import interleaved_median_seconds

CONFIG = {"new_tokens": 96, "k": 6, "ngram": 3, "early_exit_layers": 8, "repeats": 3,
          "model": "SmolLM2-135M-Instruct (utils.llama)", "threads": torch.get_num_threads()}
TARGET_SPEEDUP = 1.5
PASSAGE = ("The lighthouse stod at the end of a long, narrow spit of rock, and every night for forty years the old "
           "keeper had climbed its spiral stairs to light the lamp. Ships passed safly because of him, and none of "
           "their crews ever knew his name.")


def run() -> dict:
    from transformers import AutoTokenizer

    from utils.assets import smollm2_dir
    from utils.decoding import PromptLookup, generate, speculative_generate
    from utils.llama import EarlyExit, Llama

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    model = Llama.from_pretrained(smollm2_dir())
    messages = [{"role": "user", "content": f"Fix the spelling in this text and write it out again:\n{PASSAGE}"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    n, k, eos = CONFIG["new_tokens"], CONFIG["k"], tokenizer.eos_token_id
    lookup = PromptLookup(model.shape.vocab_size, CONFIG["ngram"])
    with torch.no_grad():
        plain = generate(model, ids, n, eos_token_id=eos)
        fast, rate = speculative_generate(model, lookup, ids, n, k=k, eos_token_id=eos)
        early, early_rate = speculative_generate(model, EarlyExit(model, CONFIG["early_exit_layers"]), ids, n, k=4,
                                                 eos_token_id=eos)
        ours, baseline = interleaved_median_seconds([lambda: speculative_generate(model, lookup, ids, n, k=k, eos_token_id=eos),
                                                     lambda: generate(model, ids, n, eos_token_id=eos)],
                                                    repeats=CONFIG["repeats"], warmup=0)
        start = time.perf_counter()
        speculative_generate(model, EarlyExit(model, CONFIG["early_exit_layers"]), ids, n, k=4, eos_token_id=eos)
        early_seconds = time.perf_counter() - start
    speedup = baseline / ours
    identical = bool(torch.equal(fast, plain)) and bool(torch.equal(early, plain))
    return {
        "metric": "time to correct the passage (greedy, up to EOS)", "unit": "s", "value": ours,
        "baseline": "plain greedy generate (KV cache)", "baseline_value": baseline, "config": CONFIG,
        "speedup": speedup, "acceptance_rate": rate, "new_tokens": plain.shape[1] - ids.shape[1],
        "early_exit": {"acceptance_rate": early_rate, "speedup": baseline / early_seconds},
        "text": tokenizer.decode(plain[0, ids.shape[1]:]),
        "targets": {"speculative.speedup": {"value": speedup, "target": f">= {TARGET_SPEEDUP}",
                                            "met": bool(speedup >= TARGET_SPEEDUP)},
                    "speculative.identical": {"value": int(identical), "target": "1", "met": identical}},
    }
