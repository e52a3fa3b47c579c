"""The course's MultiHeadAttention (notebook 01's solution) against torch.nn.MultiheadAttention.

Same weights, same input, forward pass only, no mask. Ours materialises the attention weights
(the "manual path" a learner writes); PyTorch's fast path does not, so a ratio above 1 is the
price of seeing the weights.
"""
from __future__ import annotations

import torch

from .common import median_seconds, solution_namespace

CONFIG = {"B": 8, "T": 256, "d_model": 256, "n_heads": 8, "repeats": 20, "threads": torch.get_num_threads()}


def run() -> dict:
    torch.manual_seed(0)
    B, T, d, h = CONFIG["B"], CONFIG["T"], CONFIG["d_model"], CONFIG["n_heads"]
    ours = solution_namespace("01_attention")["MultiHeadAttention"](d, h).eval()
    theirs = torch.nn.MultiheadAttention(d, h, batch_first=True).eval()
    with torch.no_grad():  # the same weights in both
        for layer, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj),
                               theirs.in_proj_weight.chunk(3), theirs.in_proj_bias.chunk(3)):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        ours.out_proj.load_state_dict(theirs.out_proj.state_dict())
    x = torch.randn(B, T, d)
    with torch.no_grad():
        difference = (ours(x) - theirs(x, x, x, need_weights=False)[0]).abs().max().item()
        value = median_seconds(lambda: ours(x), CONFIG["repeats"])
        baseline = median_seconds(lambda: theirs(x, x, x, need_weights=False), CONFIG["repeats"])
    return {
        "metric": "forward time", "unit": "s", "value": value,
        "baseline": "torch.nn.MultiheadAttention", "baseline_value": baseline,
        "config": CONFIG, "max_abs_difference": difference,
    }
