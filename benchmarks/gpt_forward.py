"""Notebook 02's GPT (the learner's classes, from the solution) against GPT2LMHeadModel of the same size.

Same weights (copied with the solution's load_gpt2_weights), same ids, forward pass only, eval mode.
Target: a time ratio of at most 1.2.
"""
from __future__ import annotations

import torch

from utils.models import gpt2_config

from .common import interleaved_median_seconds, solution_namespace

CONFIG = {"vocab_size": 50257, "n_positions": 1024, "d_model": 384, "n_layers": 6, "n_heads": 6, "B": 4, "T": 128,
          "repeats": 15, "threads": torch.get_num_threads()}


def run() -> dict:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    c = CONFIG
    namespace = solution_namespace("02_transformer")
    theirs = GPT2LMHeadModel(gpt2_config(c["vocab_size"], c["n_positions"], c["d_model"], c["n_layers"],
                                         c["n_heads"])).eval()
    ours = namespace["GPT"](c["vocab_size"], c["n_positions"], c["d_model"], c["n_layers"], c["n_heads"])
    ours = namespace["load_gpt2_weights"](ours, theirs.state_dict()).eval()
    ids = torch.randint(0, c["vocab_size"], (c["B"], c["T"]))
    with torch.no_grad():
        difference = (ours(ids) - theirs(ids).logits).abs().max().item()
        value, baseline = interleaved_median_seconds([lambda: ours(ids), lambda: theirs(ids)], c["repeats"])
    return {
        "metric": "forward time", "unit": "s", "value": value,
        "baseline": "transformers.GPT2LMHeadModel (sdpa attention)", "baseline_value": baseline,
        "config": CONFIG, "max_abs_logit_difference": difference,
        "attn_implementation": theirs.config._attn_implementation,
    }
