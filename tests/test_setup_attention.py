"""Notebooks 00 and 01: the known mistakes of `sequence_logprob` and of multi-head attention get their
hints, the reference agrees with transformers' own loss, and the student releases run top to bottom
(Run All) with no error cell, in FAST and in full mode, the demos falling back to the course's code.
"""
from __future__ import annotations

import math

import nbformat
import pytest
import torch

from autograder import manifests
from autograder.capture import run_case
from autograder.compare import grade_exercise

from conftest import RELEASE, ROOT


def _grade(exercise_id, fn):
    """Grade ``fn`` on every case (public and hidden) in-process, as the trusted side would."""
    exercise = manifests.exercise(exercise_id)
    report, arrays = {"cases": {}}, {}
    for case in exercise.cases:
        outputs, case_report = run_case(fn, exercise.call, exercise.inputs(case))
        report["cases"][case.name] = case_report
        arrays.update({f"{exercise.id}/{case.name}/{k}": v for k, v in outputs.items()})
    return grade_exercise(exercise, report, arrays)


# ----------------------------------------------------------------------------- 00: sequence_logprob

def _logprob(align="next", reduce="sum", use_mask=True, mask_shift=1, log=True):
    """A learner's sequence_logprob, right or with one known mistake."""
    def sequence_logprob(model, input_ids, mask=None):
        logits = model(input_ids)
        logits = getattr(logits, "logits", logits)
        scores = torch.log_softmax(logits, -1) if log else torch.softmax(logits, -1)
        if align == "next":
            token = scores[:, :-1].gather(-1, input_ids[:, 1:, None])[..., 0]
            keep = None if mask is None else (mask[:, 1:] if mask_shift else mask[:, :-1])
        elif align == "own":            # token t scored with the logits of position t
            token = scores[:, 1:].gather(-1, input_ids[:, 1:, None])[..., 0]
            keep = None if mask is None else mask[:, 1:]
        elif align == "own+first":      # no shift at all
            token = scores.gather(-1, input_ids[..., None])[..., 0]
            keep = mask
        else:                           # roll: the last position "predicts" token 0
            token = scores.gather(-1, input_ids.roll(-1, dims=1)[..., None])[..., 0]
            keep = None if mask is None else mask.roll(-1, dims=1)
        if keep is not None and use_mask:
            token = token * keep.float()
        total = token.sum(-1)
        if reduce == "mean":
            count = keep.float().sum(-1) if keep is not None and use_mask else torch.tensor(token.shape[1])
            total = total / count
        elif reduce == "exp":
            total = total.exp()
        elif reduce == "neg":
            total = -total
        return total
    return sequence_logprob


def test_sequence_logprob_right_answer_scores_full_marks():
    result = _grade("setup.sequence_logprob", _logprob())
    assert (result.status, result.score) == ("passed", 3.0), result.message


@pytest.mark.parametrize("wrong, words", [
    (_logprob(align="own+first"), "token 0 is scored too"),
    (_logprob(align="own"), "off by one"),
    (_logprob(align="roll"), "wraps around"),
    (_logprob(reduce="mean"), "mean log-probability"),
    (_logprob(reduce="neg"), "negative log-likelihood"),
    (_logprob(reduce="exp"), "probability of the sequence"),
    (_logprob(log=False), "summed probabilities"),
    (_logprob(use_mask=False), "every token is scored"),
    (_logprob(mask_shift=0), "the mask is off by one"),
], ids=["no shift", "own position", "roll", "mean", "negative", "probability", "softmax", "mask ignored",
        "mask not shifted"])
def test_sequence_logprob_mistakes_get_their_hint(wrong, words):
    result = _grade("setup.sequence_logprob", wrong)
    assert result.status == "failed" and result.score < 3.0
    assert words in result.message, result.message


def test_sequence_logprob_reference_is_minus_llamas_loss_times_the_predicted_tokens():
    """utils.lm.sequence_logprob == -loss * n of a (tiny, random) LlamaForCausalLM given labels, with -100
    on the tokens that are not scored: transformers' own training loss is the oracle."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.lm import sequence_logprob

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 40, (3, 9))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 6:] = False                                  # right padding
    mask[2, :4] = False                                  # an answer after a 4-token prompt
    ours = sequence_logprob(model, ids, mask=mask)
    for b in range(3):
        labels = ids[b:b + 1].masked_fill(~mask[b:b + 1], -100)
        with torch.no_grad():
            loss = model(ids[b:b + 1], labels=labels).loss
        assert ours[b].item() == pytest.approx(-loss.item() * int(mask[b, 1:].sum()), rel=1e-5)
    assert ours[0].item() == pytest.approx(sequence_logprob(model, ids[:1]).item(), rel=1e-6)


# ----------------------------------------------------------------------------- 01: multi-head attention

def _mha(final_transpose=True):
    class MultiHeadAttention(torch.nn.Module):
        def __init__(self, d_model, n_heads):
            super().__init__()
            self.n_heads, self.d_head = n_heads, d_model // n_heads
            self.q_proj, self.k_proj, self.v_proj, self.out_proj = (torch.nn.Linear(d_model, d_model) for _ in range(4))

        def forward(self, x, mask=None):
            B, T, d = x.shape
            q, k, v = (p(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
                       for p in (self.q_proj, self.k_proj, self.v_proj))
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = torch.softmax(scores, -1) @ v                       # (B, H, T, d_head)
            out = out.transpose(1, 2).reshape(B, T, d) if final_transpose else out.reshape(B, T, d)
            return self.out_proj(out)
    return MultiHeadAttention


def test_mha_right_answer_scores_full_marks():
    result = _grade("attention.mha", _mha())
    assert (result.status, result.score) == ("passed", 4.0), result.message


def test_mha_without_the_final_transpose_gets_its_hint():
    result = _grade("attention.mha", _mha(final_transpose=False))
    assert result.status == "failed"
    assert "reshaped straight to (B, T, d_model)" in result.message, result.message
    # With one head there is nothing to mix: that (hidden) case passes, the four others fail.
    assert result.score == pytest.approx(4.0 / 5)


# ----------------------------------------------------------------------------- Run All on the releases

def _errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("fast", [False], ids=["full"])   # FAST: tests/test_notebooks.py runs every release
@pytest.mark.parametrize("name, fallbacks", [
    ("00_setup", ("next_token_probs", "greedy_generate", "sequence_logprob", "cosine_similarity")),
    ("01_attention", ("scaled_dot_product_attention", "causal_mask", "MultiHeadAttention")),
])
def test_fresh_release_runs_top_to_bottom_with_no_error_cell(tmp_path, name, fallbacks, fast):
    """Run All on a student notebook with nothing solved: every cell runs, the checks say "not implemented
    yet" and the demos say they use the course's version."""
    import papermill

    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(RELEASE / f"{name}.ipynb"), str(out), parameters={"FAST": fast},
                               kernel_name="python3", cwd=str(ROOT), progress_bar=False, log_output=False)
    nb = nbformat.read(out, as_version=4)
    assert not _errors(nb), _errors(nb)
    text = _text(nb)
    for callable_name in fallbacks:
        assert f"{callable_name} is not implemented yet" in text
        assert f"your {callable_name} does not pass its self-check yet: this cell uses the course's version" in text
