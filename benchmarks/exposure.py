"""The Secret Sharer on a laptop: exposure of canaries in notebook 08's char-level GPT, end to end.

The same experiment as notebook 08's section 3 (its configuration is ``utils.safety_data.CANARY_SETUP``):
Shakespeare with five canaries ("<name>'s PIN is <4 digits>.") inserted 0, 1, 4, 16 and 64 times
among a thousand other people's PINs that appear once, a small ``utils.models.ModernGPT`` trained
from scratch by ``utils.training.train`` (Muon), then every canary's secret ranked among all 10,000
PINs by its log-perplexity given the prefix, and its exposure log2(10,000) - log2(rank) (Carlini et
al., 2019). The timed part is everything after the text is read: building the corpus, training and
scoring.

Baseline: the exposure of a secret the model has learned nothing about, whose rank is uniform over
the candidates: its expected exposure is 1/ln 2 = 1.44 bits (the 0-repetition control measures it).

Targets (issue 15): the 64-repetition canary reaches exposure >= 10 bits (it is extractable) while
the 1-repetition one stays below 3 bits, within 5 minutes on 2 cores.
"""
from __future__ import annotations

import math
import random
import time

import torch

TARGETS = {"exposure_64": (">=", 10.0), "exposure_1": ("<", 3.0), "seconds": ("<=", 300.0)}


def run_experiment(setup: dict | None = None, seed: int = 0, n_candidates: int = 10_000) -> dict:
    """Train on the canary corpus and return each canary's rank and exposure, with timings.

    ``n_candidates < 10_000`` ranks each secret among itself and ``n_candidates - 1`` other PINs drawn
    at random (the notebook's FAST mode and the tests); the benchmark uses all 10,000."""
    from utils import assets, safety_data
    from utils.evaluation import canary_log_perplexity, exposure
    from utils.models import ModernGPT
    from utils.pretraining import get_batch
    from utils.training import CharTokenizer, train

    setup = dict(safety_data.CANARY_SETUP if setup is None else setup)
    plays = assets.shakespeare_text()
    start = time.perf_counter()
    text, canaries = safety_data.canary_corpus(plays[: setup["chars"]], setup, seed=seed)
    tokenizer = CharTokenizer(plays + "0123456789")
    data = torch.tensor(tokenizer.encode(text))
    torch.manual_seed(seed)
    model = ModernGPT(tokenizer.vocab_size, n_positions=setup["block"], d_model=setup["d_model"],
                      n_layers=setup["n_layers"], n_heads=setup["n_heads"])
    generator = torch.Generator().manual_seed(seed)
    history = train(model, lambda step: get_batch(data, setup["block"], setup["batch"], generator), steps=setup["steps"],
                    max_lr=setup["max_lr"], muon_lr=setup["muon_lr"], min_lr=0.0, warmup=setup["warmup"],
                    optimizer="muon", progress=False)
    model.eval()
    trained = time.perf_counter()
    all_pins = [f"{pin:04d}" for pin in range(10_000)]
    results = []
    for canary in canaries:
        pins = all_pins
        if n_candidates < len(all_pins):
            pins = [canary.secret] + random.Random(seed).sample([p for p in all_pins if p != canary.secret],
                                                                n_candidates - 1)
        ids = torch.tensor([tokenizer.encode(canary.prefix + pin) for pin in pins])            # (n_candidates, T)
        bits = torch.cat([canary_log_perplexity(model, chunk, 4) for chunk in ids.split(2500)])  # (n_candidates,)
        rank = 1 + int((bits < bits[pins.index(canary.secret)]).sum())
        results.append({"repetitions": canary.repetitions, "rank": rank,
                        "exposure": float(exposure(torch.tensor([rank]), len(pins))[0])})
    end = time.perf_counter()
    return {"canaries": results, "seconds": end - start, "train_seconds": history.seconds,
            "score_seconds": end - trained, "final_train_loss": sum(history.losses[-50:]) / 50,
            "train_characters": len(text), "setup": setup}


def run() -> dict:
    from benchmarks.pretrain_char import cpu_name

    torch.set_flush_denormal(True)
    result = run_experiment()
    by_reps = {c["repetitions"]: c["exposure"] for c in result["canaries"]}
    measured = {"exposure_64": by_reps[64], "exposure_1": by_reps[1], "seconds": result["seconds"]}
    compare = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}
    targets = {key: {"value": measured[key], "target": f"{op} {bound:g}", "met": compare[op](measured[key], bound)}
               for key, (op, bound) in TARGETS.items()}
    return {
        "metric": "exposure of the canary inserted 64 times", "unit": "bits",
        "value": by_reps[64], "baseline": "chance (a secret the model knows nothing about)",
        "baseline_value": 1 / math.log(2),
        "config": {**result["setup"], "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_name(),
                   "candidates": 10_000},
        "exposure_by_repetitions": {str(k): v for k, v in sorted(by_reps.items())},
        "canaries": result["canaries"], "seconds": result["seconds"], "train_seconds": result["train_seconds"],
        "score_seconds": result["score_seconds"], "final_train_loss": result["final_train_loss"],
        "targets": targets, "target_met": all(t["met"] for t in targets.values()),
    }
