"""Weight quantization of SmolLM2-135M: our int8 per channel and int4 group-wise (notebook 09's
``utils.efficiency``) against float32 and against the libraries, on held-out Shakespeare.

Measured: held-out perplexity (2,048 tokens of the last plays), model bytes, and the median seconds
of a decode step (batch 1, after a 32-token prompt), every speed with the threads used and the
machine's load. The libraries: PyTorch's ``torch.ao`` dynamic int8 (int8 weights per tensor, int8
activations on the fly, fused kernels) and ``optimum-quanto``'s qint4 weights (group size 128), the
best 4-bit library that runs on this CPU (torchao's int4 paths need a GPU or are very slow here).

The "mixed" recipe keeps ``torch.ao``'s int8 everywhere the measurement allows: a linear layer whose
input activations reach above a threshold on a calibration text (text before the held-out part)
stays in float32; the threshold is the largest candidate whose perplexity on the CALIBRATION text
stays within 4 % of float32 (the held-out text only scores the result).

Why 2,048 tokens: a 1 % difference of perplexity is small next to what a short text can resolve.
Our int8's increase measured 1.23 % on 512 tokens, 1.06 % on 1,024, 0.94 % on 2,048 and 0.83 % on
4,096 (the same weights each time): the first figure is the short sample's luck, not the format's.

Targets (issue 16): our int8 perplexity within 1 % of fp32 and bytes <= 0.27 x fp32; our int4 g=32
perplexity no worse than the library's int4; the mixed recipe >= 1.2 x fp32 decode speed with
perplexity within 5 %. The fp32 weights are the shipped Q4_1 GGUF dequantized: int4 with groups of
32 lands on the file's own grid in the attention and MLP matrices.
"""
from __future__ import annotations

import time

import torch

EVAL_TOKENS = 2048
CALIBRATION_TOKENS = 256
THRESHOLDS = (4, 6, 8, 10, 20)
TARGETS = {"int8_ppl_increase": ("<=", 0.01), "int8_bytes_ratio": ("<=", 0.27), "int4_ppl_vs_library": ("<=", 1.0),
           "mixed_ppl_increase": ("<=", 0.05), "mixed_speedup": (">=", 1.2)}


def target(key: str, value: float) -> dict:
    op, bound = TARGETS[key]
    return {"value": value, "target": f"{op} {bound}", "met": bool(value <= bound if op == "<=" else value >= bound)}


def run() -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from utils import efficiency, inference
    from utils.assets import load_smollm2

    threads = inference.choose_threads(None)
    tokenizer, model = load_smollm2()
    held_out = inference.held_out_ids(tokenizer, EVAL_TOKENS)
    calibration = inference.held_out_ids(tokenizer, CALIBRATION_TOKENS, offset_chars=-400_000)
    prompt = held_out[:, :32]
    fp32_bytes = inference.model_bytes(model)
    rows: dict[str, dict] = {}

    def measure(name, quantized, n_bytes=None, speed=True):
        start = time.perf_counter()
        ppl = inference.window_perplexity(quantized, held_out)
        if n_bytes is None and not name.startswith("optimum-quanto"):   # quanto's tensors have no plain storage
            n_bytes = inference.model_bytes(quantized)
        row = {"ppl": ppl, "ppl_seconds": time.perf_counter() - start, "bytes": n_bytes,
               "bytes_ratio": None if n_bytes is None else n_bytes / fp32_bytes}
        if speed:
            step = inference.decode_seconds_per_token(quantized, prompt, 8)
            row.update(decode_ms=1000 * step, load=inference.machine_load())
        rows[name] = row
        size = "" if n_bytes is None else f"  bytes x{row['bytes_ratio']:.3f}"
        print(f"  {name:28s} ppl {ppl:7.2f}{size}" +
              (f"  decode {row['decode_ms']:.0f} ms  ({row['load']})" if speed else ""), flush=True)

    measure("fp32", model)

    def ours(bits, group_size=128):
        return inference.quantize_model(
            model, lambda name, linear: efficiency.QuantLinear(linear, bits, group_size),
            embedding_dequantize=efficiency.dequantize if bits == 8 else efficiency.dequantize_int4_groupwise)

    measure("ours int8 per channel", ours(8))
    for group_size in (32, 64, 192):        # 128 does not divide SmolLM2's width, 576
        measure(f"ours int4 g={group_size}", ours(4, group_size))
    library = inference.library_int8(model)
    measure("torch.ao dynamic int8", library, inference.library_bytes(library))
    del library

    from optimum.quanto import freeze, qint4, quantize

    quanto = inference.quantize_model(model, lambda name, linear: None)     # a plain copy
    quantize(quanto, weights=qint4)
    freeze(quanto)
    measure("optimum-quanto qint4 (g=128)", quanto, speed=False)
    del quanto

    # the mixed recipe: choose the threshold on the calibration text, score it on the held-out text
    absmax = inference.input_absmax(model, calibration)
    calibration_fp32 = inference.window_perplexity(model, calibration)
    chosen, search = None, []
    for threshold in THRESHOLDS:
        candidate = inference.library_int8(model, skip=lambda name: absmax[name] > threshold)
        increase = inference.window_perplexity(candidate, calibration) / calibration_fp32 - 1
        search.append({"threshold": threshold, "calibration_ppl_increase": increase,
                       "float_layers": sum(v > threshold for v in absmax.values())})
        if increase <= 0.04:
            chosen = threshold
        del candidate
    chosen = chosen if chosen is not None else THRESHOLDS[0]
    mixed = inference.library_int8(model, skip=lambda name: absmax[name] > chosen)
    measure("mixed (torch.ao int8 + fp32 outliers)", mixed, inference.library_bytes(mixed), speed=False)
    mixed_step, fp32_step = inference.interleaved_decode_seconds([mixed, model], prompt, 16, rounds=3)
    rows["mixed (torch.ao int8 + fp32 outliers)"].update(
        threshold=chosen, decode_ms=1000 * mixed_step, fp32_decode_ms_interleaved=1000 * fp32_step,
        load=inference.machine_load())

    fp32 = rows["fp32"]["ppl"]
    ours8, ours4 = rows["ours int8 per channel"], rows["ours int4 g=32"]
    library4 = rows["optimum-quanto qint4 (g=128)"]["ppl"]
    mixed_row = rows["mixed (torch.ao int8 + fp32 outliers)"]
    targets = {
        "int8_ppl_increase": target("int8_ppl_increase", ours8["ppl"] / fp32 - 1),
        "int8_bytes_ratio": target("int8_bytes_ratio", ours8["bytes_ratio"]),
        "int4_ppl_vs_library": target("int4_ppl_vs_library", ours4["ppl"] / library4),
        "mixed_ppl_increase": target("mixed_ppl_increase", mixed_row["ppl"] / fp32 - 1),
        "mixed_speedup": target("mixed_speedup", fp32_step / mixed_step),
    }
    from .pretrain_char import cpu_name

    return {
        "metric": "held-out perplexity of our int8 per-channel SmolLM2", "unit": "perplexity",
        "value": ours8["ppl"], "baseline": "fp32 (the shipped Q4_1 weights, dequantized)", "baseline_value": fp32,
        "config": {"eval_tokens": EVAL_TOKENS, "calibration_tokens": CALIBRATION_TOKENS, "thresholds": THRESHOLDS,
                   "threads": threads, "torch": torch.__version__, "cpu": cpu_name(), "load_at_end": inference.machine_load()},
        "formats": rows, "mixed_search": search, "targets": targets,
        "target_met": all(t["met"] for t in targets.values()),
    }
