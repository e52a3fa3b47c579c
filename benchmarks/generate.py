"""Notebook 05's cached generate on the course's Llama against ``LlamaForCausalLM.generate(do_sample=False)``.

Same weights (SmolLM2-135M-Instruct), the 32-token prompt of ``kv_cache``, 256 new tokens, greedy,
EOS ignored on both sides; the two are timed in turn (A, B, A, B, ...) and the medians compared. Both must give
the same tokens. Target (issue 12): time ratio (ours / transformers') <= 1.0: a lean loop should
beat the general one. ``profile`` says where our time goes: the share of each step spent in the
model's forward (attention, MLP, head) against the loop around it (argmax, concatenation, cache),
and the operators that take the most time on each side (``torch.profiler``, 16 tokens).
"""
from __future__ import annotations

import time

import torch

from .common import interleaved_median_seconds
from .kv_cache import prompt_ids

CONFIG = {"prompt_tokens": 32, "new_tokens": 256, "repeats": 3, "model": "SmolLM2-135M-Instruct",
          "threads": torch.get_num_threads()}
TARGET_RATIO = 1.0


class Timed:
    """The course's model interface, recording the time spent inside the model."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0

    def new_cache(self):
        return self.model.new_cache()

    def __call__(self, input_ids, cache=None):
        start = time.perf_counter()
        out = self.model(input_ids, cache=cache)
        self.seconds += time.perf_counter() - start
        return out


def top_ops(fn, n: int = 6) -> dict:
    """torch.profiler's operators with the most self CPU time over one call of ``fn``: {op: [ms, calls]}."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return {e.key: [round(e.self_cpu_time_total / 1e3, 2), e.count] for e in rows}


def run() -> dict:
    from transformers import GenerationConfig

    from utils.assets import smollm2_dir
    from utils.decoding import generate
    from utils.generation import smollm2_hf
    from utils.llama import Llama

    tokenizer, hf = smollm2_hf()
    model = Llama.from_pretrained(smollm2_dir())
    ids = prompt_ids(tokenizer, CONFIG["prompt_tokens"])
    n = CONFIG["new_tokens"]
    config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                              pad_token_id=tokenizer.eos_token_id)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours_tokens = generate(model, ids, n)
        theirs_tokens = hf.generate(ids, attention_mask=mask, generation_config=config)
        ours, theirs = interleaved_median_seconds([lambda: generate(model, ids, n),
                                                   lambda: hf.generate(ids, attention_mask=mask, generation_config=config)],
                                                  repeats=CONFIG["repeats"], warmup=0)
        timed = Timed(model)
        start = time.perf_counter()
        generate(timed, ids, n)
        total = time.perf_counter() - start
        ops = {"ours": top_ops(lambda: generate(model, ids, 16)),
               "transformers": top_ops(lambda: hf.generate(ids, attention_mask=mask, generation_config=GenerationConfig(
                   max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None,
                   pad_token_id=tokenizer.eos_token_id)))}
    ratio = ours / theirs
    return {
        "metric": f"time for {n} new tokens", "unit": "s", "value": ours,
        "baseline": "transformers LlamaForCausalLM.generate (sdpa, DynamicCache)", "baseline_value": theirs,
        "config": CONFIG, "identical": bool(torch.equal(ours_tokens, theirs_tokens)),
        "tokens_per_second": {"ours": n / ours, "transformers": n / theirs},
        "profile": {"share_in_model_forward": timed.seconds / total, "share_in_the_loop": 1 - timed.seconds / total,
                    "top_ops_16_tokens": ops},
        "targets": {"generate.time_ratio": {"value": ratio, "target": f"<= {TARGET_RATIO}",
                                            "met": bool(ratio <= TARGET_RATIO)}},
    }
