"""Serving SmolLM2-135M over HTTP: 16 concurrent clients, 64 new tokens each, on loopback.

``utils.serving``'s server (FastAPI + uvicorn, OpenAI-style ``/v1/completions``, server-sent events)
three times in the same process: with continuous batching (up to 16 requests decoded together,
newcomers join the running batch before each step), with static batching (a batch runs to its end;
``continuous=False``) and one request at a time (``max_batch_size=1``). Static batching alone was
not enough: on a loaded machine the first of the 16 simultaneous requests often started a batch
alone and the other 15 waited for its 64 tokens (time to first token p50 about 30 s), and the ratio
was 2.99 in one run and 4.2 in another. Each client streams one completion; throughput is generated
tokens per second of wall time, latency is per request (p50, p95). Clients and server share the
machine's cores, and the load is printed with the result.

Target (issue 16): batched throughput >= 3 x the one-at-a-time server; p95 latency reported.
"""
from __future__ import annotations

import torch

CLIENTS, NEW_TOKENS, TARGET_RATIO, MAX_WAIT_MS = 16, 64, 3.0, 50
PROMPTS = ["Now is the winter of our discontent", "Friends, Romans, countrymen, lend me your ears;",
           "All the world's a stage,", "If music be the food of love, play on;"]


def run() -> dict:
    from utils import inference, serving
    from utils.assets import load_smollm2

    from .pretrain_char import cpu_name

    threads = inference.choose_threads(None)
    tokenizer, model = load_smollm2()
    results = {}
    for label, batch_size, continuous in (("batched", CLIENTS, True), ("static batching", CLIENTS, False),
                                          ("one at a time", 1, False)):
        with serving.LocalServer(model, tokenizer, max_batch_size=batch_size, max_pending=4 * CLIENTS,
                                 max_wait_ms=MAX_WAIT_MS, continuous=continuous) as server:
            serving.complete(server.url, "warm-up", max_tokens=2)
            results[label] = serving.load_test(server.url, PROMPTS, CLIENTS, NEW_TOKENS, timeout=1800)
            results[label]["load"] = inference.machine_load()
        print(f"  {label:14s} {results[label]['throughput']:.1f} tokens/s, p95 latency "
              f"{results[label]['latency_p95']:.1f} s ({results[label]['load']})", flush=True)
    ratio = results["batched"]["throughput"] / results["one at a time"]["throughput"]
    return {
        "metric": f"throughput, {CLIENTS} concurrent clients x {NEW_TOKENS} new tokens", "unit": "tokens/s",
        "value": results["batched"]["throughput"], "baseline": "the same server, one request at a time",
        "baseline_value": results["one at a time"]["throughput"],
        "config": {"clients": CLIENTS, "new_tokens": NEW_TOKENS, "max_wait_ms": MAX_WAIT_MS, "threads": threads, "torch": torch.__version__,
                   "cpu": cpu_name(), "loopback_only": True},
        "batched": results["batched"], "static_batching": results["static batching"],
        "one_at_a_time": results["one at a time"],
        "p95_latency_s": {"batched": results["batched"]["latency_p95"],
                          "static_batching": results["static batching"]["latency_p95"],
                          "one_at_a_time": results["one at a time"]["latency_p95"]},
        "targets": {"batched_throughput_ratio": {"value": ratio, "target": f">= {TARGET_RATIO}",
                                                 "met": bool(ratio >= TARGET_RATIO)}},
    }
