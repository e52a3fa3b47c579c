"""Notebook 06's reference solutions: scoring choices by likelihood, few-shot prompts, LoRA, SFT labels.

This module holds the answers of notebook 06's exercises, so the sandbox leaves it out while 06 is
graded; notebooks after 06 and the benchmarks may import it. The grader does not compare with it:
``score_choices`` is checked against ``transformers``' own loss, ``LoRALinear`` against ``peft``,
``build_sft_labels`` and ``build_few_shot_prompt`` against their contracts written out in
``autograder/oracles/finetuning.py``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_choice(tokenizer, prompt: str, choice: str) -> tuple[list[int], list[int]]:
    """The token ids of ``prompt`` and of ``choice`` after it, split where the tokenizer splits them.

    As in lm-evaluation-harness: trailing whitespace of the prompt moves to the front of the
    choice (``"Answer: "`` + ``"yes"`` is scored as ``"Answer:"`` + ``" yes"``, one token
    ``Ġyes`` rather than ``Ġ`` then ``yes``), then the choice's tokens are the tokens of
    ``prompt + choice`` that come after the prompt's own tokens.
    """
    stripped = prompt.rstrip()
    choice = prompt[len(stripped):] + choice
    context = tokenizer(stripped)["input_ids"]
    whole = tokenizer(stripped + choice)["input_ids"]
    if whole[:len(context)] != context:
        raise ValueError(f"the tokens of {stripped!r} are not a prefix of those of {stripped + choice!r}: "
                         "the choice merges with the end of the prompt")
    return context, whole[len(context):]


@torch.no_grad()
def score_choices(model, tokenizer, prompt: str, choices: Sequence[str]) -> torch.Tensor:
    """Summed log-probability of each choice's tokens given the prompt: (len(choices),) float tensor."""
    scores = []
    for choice in choices:
        context, continuation = split_choice(tokenizer, prompt, choice)
        ids = torch.tensor([context + continuation])                     # (1, T)
        log_probs = F.log_softmax(model(ids).logits.float(), dim=-1)     # (1, T, V)
        # Position t predicts token t + 1: the choice's tokens are predicted by the positions before them.
        positions = torch.arange(len(context) - 1, ids.shape[1] - 1)
        scores.append(log_probs[0, positions, ids[0, positions + 1]].sum())
    return torch.stack(scores)


def build_few_shot_prompt(examples: Sequence[tuple[str, str]], query: str, template: str,
                          instruction: str = "") -> str:
    """The instruction (if any), each example in the template, then the query with an empty answer.

    Parts are separated by a blank line; the prompt ends where the answer would start, without a
    trailing space.
    """
    parts = [instruction] if instruction else []
    parts += [template.format(input=text, output=answer) for text, answer in examples]
    parts.append(template.format(input=query, output="").rstrip())
    return "\n\n".join(parts)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = base(x) + (alpha / r) * x A^T B^T.

    ``lora_A`` (r, in_features) starts random (Kaiming-uniform, as in ``peft``), ``lora_B``
    (out_features, r) starts at zero, so the layer starts as exactly the base layer.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling   # (..., out)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """The base layer with the update folded in: W <- W + (alpha / r) B A. No extra cost at inference."""
        self.base.weight += (self.lora_B @ self.lora_A) * self.scaling
        self.lora_B.zero_()                  # the update now lives in the base weight: do not add it twice
        return self.base


def build_sft_labels(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
                     pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A right-padded batch for supervised fine-tuning: (input_ids, attention_mask, labels), each (B, L).

    Row b is prompt_ids[b] + answer_ids[b], then pad_token_id up to the longest row. labels copy
    input_ids on the answer tokens and hold -100 on the prompt and the padding, so the loss
    (transformers shifts labels inside the model) trains only the answer.
    """
    rows = [list(p) + list(a) for p, a in zip(prompt_ids, answer_ids)]
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for b, (prompt, row) in enumerate(zip(prompt_ids, rows)):
        input_ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, :len(row)] = 1
        labels[b, len(prompt):len(row)] = input_ids[b, len(prompt):len(row)]
    return input_ids, attention_mask, labels
