"""Measuring a model at inference time: perplexity, prefill and decode speed, memory bandwidth,
model size, and swapping its linear layers for quantized ones. Shared by notebook 09,
``utils.serving`` and ``benchmarks/`` (no exercise's answer is in here).

Every speed is measured on whatever else the machine is doing: :func:`machine_load` gives the
numbers to print beside it (threads used, load average over the last minute, cores).

Decoding uses the model's own KV cache (``transformers``' ``DynamicCache``) through
:func:`greedy_decode`, the one place to point at another ``generate``.
"""
from __future__ import annotations

import copy
import math
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn


def machine_load() -> str:
    """``"1 thread, load 3.2 on 2 cores"``: what a speed was measured under."""
    threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{threads} thread{'s' if threads > 1 else ''}, load {load:.1f} on {os.cpu_count()} cores"


def choose_threads(threads: int | None = None) -> int:
    """Set PyTorch's number of threads: ``threads`` if given, else all cores when the machine is idle
    and 1 when it is busy (load average above half the cores), where threads wait on each other and
    two can be many times slower than one. Returns the number chosen."""
    if not threads:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        cores = os.cpu_count() or 1
        threads = 1 if load > cores / 2 else torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def held_out_ids(tokenizer, n_tokens: int, offset_chars: int = 0) -> torch.Tensor:
    """(1, n_tokens) ids of held-out Shakespeare: the last 10 % of the plays (notebook 04's validation split)."""
    from .assets import shakespeare_text

    text = shakespeare_text()
    start = int(0.9 * len(text)) + offset_chars
    chunk = text[start:start + 8 * n_tokens + 1000]
    ids = tokenizer(chunk, return_tensors="pt").input_ids[:, :n_tokens]
    if ids.shape[1] < n_tokens:
        raise ValueError(f"only {ids.shape[1]} tokens in the held-out chunk")
    return ids


@torch.no_grad()
def window_perplexity(model, ids: torch.Tensor) -> float:
    """exp(mean next-token loss) of ``ids`` (1, N), N within the context window: one window, scored by
    ``transformers``' own shifted loss (``labels=ids``). Notebook 08's graded ``perplexity`` slides
    windows over a longer text; for a text that fits in one window both give this number.
    """
    return math.exp(model(ids, labels=ids).loss.float().item())


@torch.no_grad()
def greedy_decode(model, ids: torch.Tensor, max_new_tokens: int, on_token: Callable | None = None) -> tuple[torch.Tensor, list[float]]:
    """Greedy decoding with a KV cache: ``(new ids (B, max_new_tokens), seconds of each decode step)``.

    The prompt (B, T) is one prefill pass; each new token is one decode step that reads the cache.
    ``on_token(step, ids (B,))`` is called after every token.
    """
    out = model(ids, use_cache=True)
    cache = out.cache
    next_ids = out.logits[:, -1].argmax(-1)                                  # (B,)
    new, times = [next_ids], []
    if on_token:
        on_token(0, next_ids)
    for step in range(1, max_new_tokens):
        start = time.perf_counter()
        out = model(next_ids[:, None], cache=cache, use_cache=True)
        cache = out.cache
        next_ids = out.logits[:, -1].argmax(-1)
        times.append(time.perf_counter() - start)
        new.append(next_ids)
        if on_token:
            on_token(step, next_ids)
    return torch.stack(new, dim=1), times                                    # (B, max_new_tokens)


def decode_seconds_per_token(model, prompt: torch.Tensor, new_tokens: int = 16) -> float:
    """Median seconds of one decode step (batch of ``prompt``), after a prefill of the prompt."""
    _, times = greedy_decode(model, prompt, new_tokens + 1)
    return statistics.median(times)


def interleaved_decode_seconds(models: list, prompt: torch.Tensor, new_tokens: int = 8, rounds: int = 3) -> list[float]:
    """Median seconds per decode step of each model, measured in turns (A, B, A, B, ...).

    On a shared machine the load drifts; taking turns gives every model the same conditions, so
    their ratio is fairer than two measurements one after the other.
    """
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, bucket in zip(models, times):
            bucket.extend(greedy_decode(model, prompt, new_tokens + 1)[1])
    return [statistics.median(bucket) for bucket in times]


@torch.no_grad()
def prefill_seconds(model, ids: torch.Tensor, repeats: int = 3) -> float:
    """Median seconds of one forward pass over the whole prompt ``ids`` (B, T)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(ids, use_cache=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second this machine moves: copy a ``megabytes`` MB tensor into another (read + write).

    The tensors are far larger than any CPU cache, so this is main-memory bandwidth, the ceiling
    of a decode step that must read every weight once.
    """
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)                                                      # touch the pages once
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - start)
    return 2 * source.numel() * 4 / min(times)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage counted once (tied weights share one)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def linear_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` of a model (for SmolLM2: 7 per layer, then ``lm_head``)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class QuantizedEmbedding(nn.Module):
    """The input embedding of a model whose tied LM head was quantized: looks rows up in the LM head's
    quantized buffers (``qweight``, ``scale`` and, for 4 bits, ``minimum``) and dequantizes only those.

    The rows of a per-output-channel (8 bits) or per-row-group (4 bits) quantization are independent,
    so dequantizing the rows of ``ids`` gives the rows of the dequantized matrix. ``dequantize_rows``
    is the notebook's ``dequantize`` (8 bits) or ``dequantize_int4_groupwise`` (4 bits).
    """

    def __init__(self, head: nn.Module, dequantize_rows: Callable):
        super().__init__()
        self.head = [head]                      # a list: the buffers stay owned (and counted) by the LM head
        self.dequantize_rows = dequantize_rows

    def forward(self, ids):
        head = self.head[0]
        flat = ids.reshape(-1)                                                 # (B*T,)
        if getattr(head, "bits", 8) == 8:
            rows = self.dequantize_rows(head.qweight[flat], head.scale[flat])
        else:
            rows = self.dequantize_rows(head.qweight[flat], head.scale[flat], head.minimum[flat], head.group_size)
        return rows.reshape(*ids.shape, -1)                                    # (B, T, d)


def quantize_model(model: nn.Module, make_layer: Callable[[str, nn.Linear], nn.Module | None],
                   embedding_dequantize: Callable | None = None) -> nn.Module:
    """A quantized COPY of ``model``: each ``nn.Linear`` called ``name`` becomes ``make_layer(name, linear)``
    (``None`` keeps it in float). If the LM head is tied to the input embedding and was replaced, the
    embedding reads the head's quantized buffers through :class:`QuantizedEmbedding`, so the big
    matrix is stored once, quantized."""
    tied = model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    quantized = copy.deepcopy(model)
    for name in linear_names(quantized):
        replacement = make_layer(name, quantized.get_submodule(name))
        if replacement is not None:
            _set_module(quantized, name, replacement)
    head = quantized.get_output_embeddings() if hasattr(quantized, "get_output_embeddings") else None
    if tied and head is not None and not isinstance(head, nn.Linear):
        if embedding_dequantize is None:
            raise ValueError("the LM head is tied to the embedding: pass embedding_dequantize")
        quantized.set_input_embeddings(QuantizedEmbedding(head, embedding_dequantize))
    return quantized.eval()


def library_int8(model: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> nn.Module:
    """PyTorch's own dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``) of a copy of
    ``model``: int8 weights per tensor, and the activations quantized to int8 on the fly at every
    matmul, so the matmul itself runs in int8 (fbgemm/onednn kernels). Layers where ``skip(name)``
    stay in float32."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    chosen = {name: default_dynamic_qconfig for name in linear_names(model) if not skip(name)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # torch.ao's notice that it is moving to torchao
        return quantize_dynamic(copy.deepcopy(model), chosen, dtype=torch.qint8).eval()


def library_bytes(model: nn.Module) -> int:
    """Bytes of a ``torch.ao`` dynamically quantized model: float tensors plus its packed int8 weights."""
    total = 0
    for value in model.state_dict().values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple):                  # (packed weight, bias) of a quantized Linear
            total += sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
    return total


@torch.no_grad()
def input_absmax(model: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Largest |activation| entering each ``nn.Linear`` on ``ids``: where the outliers are."""
    found: dict[str, float] = {}
    hooks = [module.register_forward_hook(lambda mod, args, out, name=name: found.__setitem__(
        name, max(found.get(name, 0.0), args[0].abs().max().item())))
        for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    try:
        model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return found
