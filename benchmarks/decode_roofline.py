"""A decode step of SmolLM2-135M against its memory bound: bytes read / measured bandwidth.

The bound is ``decode_flops_and_bytes`` (notebook 09) at float32 with the cache at the measured
length, divided by the bandwidth of a 256 MiB copy (read + write) on the same machine; the step is
the median of 32 greedy decode steps after a 32-token prompt. The ratio (measured / bound) says how
far the implementation is from reading its weights at the machine's bandwidth; batch 4 and 16 show
that the same step serves more tokens. Every speed carries the threads used and the load.
"""
from __future__ import annotations

import torch

PROMPT, NEW = 32, 32


def run() -> dict:
    from utils import efficiency, inference
    from utils.assets import load_smollm2

    from .pretrain_char import cpu_name

    threads = inference.choose_threads(None)
    tokenizer, model = load_smollm2()
    prompt = inference.held_out_ids(tokenizer, PROMPT)
    bandwidth = inference.memory_bandwidth(256)
    flops, n_bytes = efficiency.decode_flops_and_bytes(model.config, PROMPT + NEW // 2, dtype_bytes=4)
    bound = n_bytes / bandwidth
    step = inference.decode_seconds_per_token(model, prompt, NEW)
    batches = {B: inference.decode_seconds_per_token(model, prompt.repeat(B, 1), 8) for B in (4, 16)}
    return {
        "metric": "decode step time (batch 1)", "unit": "ms", "value": 1000 * step,
        "baseline": "memory bound: weight + KV bytes / measured bandwidth", "baseline_value": 1000 * bound,
        "config": {"prompt_tokens": PROMPT, "new_tokens": NEW, "dtype": "float32", "threads": threads,
                   "load": inference.machine_load(), "torch": torch.__version__, "cpu": cpu_name()},
        "bandwidth_gb_s": bandwidth / 1e9, "bytes_per_step": n_bytes, "flops_per_step": flops,
        "flops_per_byte": flops / n_bytes,
        "batched_step_ms": {str(B): 1000 * s for B, s in batches.items()},
        "batched_tokens_per_s": {"1": 1 / step, **{str(B): B / s for B, s in batches.items()}},
    }
