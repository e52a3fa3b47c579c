"""What notebook 05 and later ones share about generation (no exercise's answer is here).

* :func:`smollm2_hf` loads ``transformers``' SmolLM2-135M-Instruct once per process: the notebook,
  the grader's calls in the same kernel and the oracles share one copy (never modify it).
* :func:`distinct_n` and :func:`self_perplexity`: the diversity and quality measures of sampled text.

>>> distinct_n([[1, 2, 1, 2, 1, 2]], 2)     # bigrams (1,2), (2,1), (1,2), (2,1), (1,2): 2 distinct of 5
0.4
"""
from __future__ import annotations

import functools
import math


@functools.lru_cache(maxsize=1)
def smollm2_hf():
    """``(tokenizer, LlamaForCausalLM)`` of SmolLM2-135M-Instruct, loaded once (``utils.assets``)."""
    from .assets import load_smollm2

    return load_smollm2()


def distinct_n(sequences, n: int) -> float:
    """Distinct n-grams over all n-grams of ``sequences`` (lists of token ids): 1.0 = nothing repeats (Li et al., 2016)."""
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_perplexity(model, ids, prompt_length: int) -> float:
    """The model's own perplexity of the tokens after ``prompt_length`` in ``ids`` (B, T): exp(mean NLL).

    ``model(ids) -> logits`` (the course's interface); low means the model finds the text likely.
    """
    import torch

    with torch.no_grad():
        logits = model(ids)                                                     # (B, T, V)
        logprobs = torch.log_softmax(logits[:, prompt_length - 1:-1].float(), -1)
        targets = ids[:, prompt_length:]                                        # (B, T - prompt_length)
        nll = -logprobs.gather(-1, targets[..., None]).mean()
    return math.exp(float(nll))
