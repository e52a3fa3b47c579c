"""Notebook 06's grading, its reference module and its shared tasks, without running the notebook.

The course's references must pass every case whatever the hidden seed, and each known mistake,
written here as a wrong implementation, must fail with the hint that names it.
"""
from __future__ import annotations

import datetime
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autograder.manifests import assignment, exercise
from utils import adaptation
from utils.tasks import DATE_FORMATS, date_task, exact_match_rate, first_line, next_token_log_probs
from utils.tasks import testament_task as make_testament_task
from conftest import outcomes

ASSIGNMENT = assignment("06_finetuning")
REFERENCES = {"score_choices": adaptation.score_choices, "build_few_shot_prompt": adaptation.build_few_shot_prompt,
              "LoRALinear": adaptation.LoRALinear, "build_sft_labels": adaptation.build_sft_labels}


def hints(ex_id, fn):
    results = outcomes(exercise(ex_id), fn, public_only=True)
    assert not all(passed for _, passed, _ in results), f"{ex_id}: a wrong implementation passed every case"
    return " ".join(str(hint) for _, passed, hint in results if not passed)


@pytest.mark.parametrize("secret", ["llm-course-default-secret", "another course"])
def test_the_references_pass_every_case_whatever_the_hidden_seed(monkeypatch, secret):
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    for ex in ASSIGNMENT.exercises:
        failures = [(name, hint) for name, passed, hint in outcomes(ex, REFERENCES[ex.callable]) if not passed]
        assert not failures, (ex.id, failures)


# ----------------------------------------------------------------------------- score_choices: wrong versions


def _choice_scores(split, select):
    @torch.no_grad()
    def score_choices(model, tokenizer, prompt, choices):
        scores = []
        for choice in choices:
            context, continuation = split(tokenizer, prompt, choice)
            ids = torch.tensor([context + continuation])
            log_probs = F.log_softmax(model(ids).logits[0], dim=-1)                  # (T, V)
            scores.append(select(log_probs, ids[0], len(context)))
        return torch.stack(scores)
    return score_choices


def _right_split(tokenizer, prompt, choice):
    return adaptation.split_choice(tokenizer, prompt, choice)


def _sum_from(offset):
    def select(log_probs, ids, n_context):
        positions = torch.arange(n_context, len(ids))
        return log_probs[positions - offset, ids[positions]].sum()
    return select


def test_scoring_the_prompt_too_gets_its_hint():
    def with_prompt(log_probs, ids, n_context):
        return log_probs[torch.arange(len(ids) - 1), ids[1:]].sum()
    assert "prompt's tokens too" in hints("finetuning.score_choices", _choice_scores(_right_split, with_prompt))


def test_off_by_one_alignment_gets_its_hint():
    assert "off by one" in hints("finetuning.score_choices", _choice_scores(_right_split, _sum_from(0)))


def test_separate_tokenization_gets_the_boundary_hint():
    def separate(tokenizer, prompt, choice):
        return tokenizer(prompt)["input_ids"], tokenizer(choice)["input_ids"]
    assert "'Ġ' + 'yes'" in hints("finetuning.score_choices", _choice_scores(separate, _sum_from(1)))


def test_slicing_without_moving_the_space_gets_the_boundary_hint():
    def sliced(tokenizer, prompt, choice):
        context = tokenizer(prompt)["input_ids"]
        return context, tokenizer(prompt + choice)["input_ids"][len(context):]
    assert "trailing space left in place" in hints("finetuning.score_choices", _choice_scores(sliced, _sum_from(1)))


def test_mean_log_probability_gets_its_hint():
    def mean(log_probs, ids, n_context):
        positions = torch.arange(n_context, len(ids))
        return log_probs[positions - 1, ids[positions]].mean()
    assert "mean log-probability" in hints("finetuning.score_choices", _choice_scores(_right_split, mean))


def test_a_batched_padded_score_choices_passes():
    """A learner who scores all choices in one right-padded batch gets the same scores."""
    @torch.no_grad()
    def batched(model, tokenizer, prompt, choices):
        splits = [adaptation.split_choice(tokenizer, prompt, c) for c in choices]
        rows = [c + k for c, k in splits]
        length = max(map(len, rows))
        ids = torch.zeros((len(rows), length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
        log_probs = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits, dim=-1)   # (B, L, V)
        scores = []
        for b, (context, continuation) in enumerate(splits):
            positions = torch.arange(len(context), len(context) + len(continuation))
            scores.append(log_probs[b, positions - 1, ids[b, positions]].sum())
        return torch.stack(scores)
    assert all(passed for _, passed, _ in outcomes(exercise("finetuning.score_choices"), batched, public_only=True))


def test_the_oracle_scores_with_the_very_model_the_kernel_builds():
    from autograder.manifests.finetuning import call_score
    from autograder.oracles.finetuning import _tiny_model

    ex = exercise("finetuning.score_choices")
    inputs = ex.inputs(ex.cases[0])

    def digest(model, tokenizer, prompt, choices):
        return torch.stack([p.double().sum() for p in model.parameters()])

    kernel = call_score(digest, inputs)["scores"]
    oracle = torch.stack([p.double().sum() for p in _tiny_model(int(inputs["model_seed"])).parameters()]).float()
    assert torch.equal(kernel, oracle)


# ----------------------------------------------------------------------------- few-shot prompts


def test_few_shot_mistakes_get_their_hints():
    def trailing_space(examples, query, template, instruction=""):
        return adaptation.build_few_shot_prompt(examples, query, template, instruction) + " "

    def one_newline(examples, query, template, instruction=""):
        parts = ([instruction] if instruction else []) + [template.format(input=i, output=o) for i, o in examples]
        return "\n".join(parts + [template.format(input=query, output="").rstrip()])

    assert "ends with a space" in hints("finetuning.few_shot_prompt", trailing_space)
    assert "blank line" in hints("finetuning.few_shot_prompt", one_newline)


# ----------------------------------------------------------------------------- LoRA


class LoRABRandom(adaptation.LoRALinear):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.normal_(self.lora_B)


class LoRANoScaling(adaptation.LoRALinear):
    def forward(self, x):
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


class LoRABaseTrainable(adaptation.LoRALinear):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        base.requires_grad_(True)


class LoRAMergeUnscaled(adaptation.LoRALinear):
    @torch.no_grad()
    def merge(self):
        self.base.weight += self.lora_B @ self.lora_A
        return self.base


@pytest.mark.parametrize("wrong, words", [(LoRABRandom, "initialise lora_B with zeros"),
                                          (LoRANoScaling, "scaled by alpha / r"),
                                          (LoRABaseTrainable, "still trainable"),
                                          (LoRAMergeUnscaled, "SCALED update")])
def test_lora_mistakes_get_their_hints(wrong, words):
    assert words in hints("finetuning.lora_linear", wrong)


def test_lora_starts_as_the_base_layer_and_merging_changes_no_output():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    x = torch.randn(4, 12)
    before = base(x).detach().clone()
    lora = adaptation.LoRALinear(base, r=3, alpha=6)
    assert torch.equal(lora(x), before)
    assert [name for name, p in lora.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    with torch.no_grad():
        lora.lora_B.normal_()
    unmerged = lora(x).detach()
    merged = lora.merge()
    assert torch.allclose(merged(x), unmerged, atol=1e-5)
    assert torch.allclose(lora(x), unmerged, atol=1e-5)        # still usable after merging, no double counting


# ----------------------------------------------------------------------------- SFT labels


def test_sft_mistakes_get_their_hints():
    def with_prompt(prompt_ids, answer_ids, pad_token_id):
        input_ids, mask, _ = adaptation.build_sft_labels(prompt_ids, answer_ids, pad_token_id)
        return input_ids, mask, torch.where(mask.bool(), input_ids, torch.full_like(input_ids, -100))

    def pad_by_value(prompt_ids, answer_ids, pad_token_id):
        input_ids, mask, labels = adaptation.build_sft_labels(prompt_ids, answer_ids, pad_token_id)
        return input_ids, mask, labels.masked_fill(input_ids == pad_token_id, -100)

    assert "prompt's tokens are in the labels" in hints("finetuning.sft_labels", with_prompt)
    assert "<|im_end|>" in hints("finetuning.sft_labels", pad_by_value)


def test_sft_labels_train_only_the_answer_in_a_real_model_loss():
    """With transformers' own shift, only the answer's tokens contribute to the loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    input_ids, mask, labels = adaptation.build_sft_labels([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_token_id=0)
    assert labels.tolist() == [[-100, -100, -100, 9, 10], [-100, 11, 12, 13, -100]]
    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    log_probs = F.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits, dim=-1)
    answer = [(0, 3), (0, 4), (1, 1), (1, 2), (1, 3)]           # (row, position) of every answer token
    by_hand = -torch.stack([log_probs[b, t - 1, input_ids[b, t]] for b, t in answer]).mean()
    assert torch.allclose(loss, by_hand, atol=1e-5)


# ----------------------------------------------------------------------------- tasks and helpers


def test_testament_task_is_fixed_balanced_and_disjoint():
    task, again = make_testament_task(), make_testament_task(n_train=32, n_test=20, n_pool=8)
    assert again.test == task.test[:20] and task.test == make_testament_task().test
    for split in (task.train, task.test, task.pool):
        labels = [e.output for e in split]
        assert labels.count("Old") == labels.count("New")
    texts = [{e.input for e in split} for split in (task.train, task.test, task.pool)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_date_task_answers_are_the_dates_written_and_splits_share_no_date():
    task = date_task(n_train=300, n_test=200, n_pool=64)
    assert task.test == date_task(n_train=5, n_test=200).test
    parse = {"5 March 1987": "%d %B %Y", "March 5, 1987": "%B %d, %Y", "Mar 5 1987": "%b %d %Y",
             "1987/03/05": "%Y/%m/%d", "05.03.1987": "%d.%m.%Y", "MAR 05 1987": "%b %d %Y"}
    assert set(parse) < set(DATE_FORMATS)
    for example in task.train + task.test:
        date = datetime.date.fromisoformat(example.output)
        assert example.input in {fmt(date) for fmt in DATE_FORMATS.values()}
        for style, pattern in parse.items():
            if DATE_FORMATS[style](date) == example.input:
                assert datetime.datetime.strptime(example.input, pattern).date() == date
    outputs = [{e.output for e in split} for split in (task.train, task.test, task.pool)]
    assert not (outputs[0] & outputs[1]) and not (outputs[1] & outputs[2])
    assert exact_match_rate([" 1987-03-05\nDate:"], ["1987-03-05"]) == 1.0 and first_line("\n x \n") == "x"


def test_cached_prefix_scoring_equals_score_choices_for_one_token_labels():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from utils.assets import smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(prepare=False))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=0.3)).eval()
    task = make_testament_task(n_train=2, n_test=5, n_pool=4)
    prefix = "\n\n".join(task.template.format(input=e.input, output=e.output) for e in task.pool)
    labels = [tokenizer(" " + label)["input_ids"][0] for label in task.labels]
    queries = ["\n\n" + task.prompt(e.input) for e in task.test]
    fast = next_token_log_probs(model, tokenizer, prefix, queries, labels, batch_size=3)
    slow = torch.stack([adaptation.score_choices(model, tokenizer, prefix + q, [" Old", " New"]) for q in queries])
    assert torch.allclose(fast, slow, atol=1e-3), (fast, slow)
