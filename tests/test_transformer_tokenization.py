"""Notebooks 02 and 03: the block graded on its wiring, WordPiece's merge rule, the library claim the
prose makes, a wrong LayerNorm graded for real, and the release notebooks run top to bottom.

The first part needs no kernel. The kernel tests start three kernels (one graded variant of 02, and
the two release notebooks run as a learner runs them, FAST).
"""
from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn

from autograder import manifests
from autograder.capture import run_case
from autograder.compare import diagnose
from autograder.grade import grade_notebook
from autograder.oracles.tokenization import _wordpiece
from utils import bpe, gpt
from utils.assets import shakespeare_text
from utils.models import CausalSelfAttention
from utils.tokenization import pretokenize

from conftest import make_variant

BLOCK = manifests.exercise("transformer.block")


# ----------------------------------------------------------------------------- the block, judged on its wiring


class _Parts(nn.Module):
    def __init__(self, d, heads, norm=gpt.LayerNorm, causal=True):
        super().__init__()
        self.ln_1, self.ln_2 = norm(d), norm(d)
        self.attn = CausalSelfAttention(d, heads) if causal else _NotCausal(d, heads)
        self.mlp = gpt.FeedForward(d, 4 * d)


class _NotCausal(CausalSelfAttention):
    def forward(self, x, mask=None):
        B, T, d = x.shape

        def split(z):
            return z.view(B, T, self.n_heads, self.d_head).transpose(1, 2)      # (B, H, T, d_head)

        out = torch.nn.functional.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                                               split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(B, T, d))


class _UnbiasedLayerNorm(gpt.LayerNorm):
    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + self.eps) * self.weight + self.bias


def _block(forward, **parts):
    class Block(_Parts):
        def __init__(self, d, heads):
            super().__init__(d, heads, **parts)

    Block.forward = forward
    return Block


PRE_NORM = lambda s, x: (lambda h: h + s.mlp(s.ln_2(h)))(x + s.attn(s.ln_1(x)))  # noqa: E731

WRONG_BLOCKS = {
    "post-norm": (lambda s, x: (lambda h: s.ln_2(h + s.mlp(h)))(s.ln_1(x + s.attn(x))), {}),
    "residual connections are missing": (lambda s, x: s.mlp(s.ln_2(s.attn(s.ln_1(x)))), {}),
    "own ln_2": (lambda s, x: (lambda h: h + s.mlp(s.ln_1(h)))(x + s.attn(s.ln_1(x))), {}),
    "one after the other": (lambda s, x: x + s.attn(s.ln_1(x)) + s.mlp(s.ln_2(x)), {}),
    "not causal": (PRE_NORM, {"causal": False}),
    "as modules": (lambda s, x: (lambda h: h + s.mlp(s.ln_2(h)))(x + s.attn(s.ln_1.forward(x))), {}),
}


def _diagnoses(block_class):
    results = []
    for case in BLOCK.cases:
        inputs = BLOCK.inputs(case)
        outputs, report = run_case(block_class, BLOCK.call, inputs)
        assert report["status"] == "ok", report
        results.append(diagnose(BLOCK, inputs, outputs))
    return results


def test_the_course_block_and_one_with_a_wrong_layer_norm_pass_the_wiring_check():
    assert all(passed for passed, _, _ in _diagnoses(gpt.TransformerBlock))
    assert all(passed for passed, _, _ in _diagnoses(_block(PRE_NORM, norm=_UnbiasedLayerNorm)))


@pytest.mark.parametrize("words", list(WRONG_BLOCKS), ids=list(WRONG_BLOCKS))
def test_each_wrong_wiring_fails_every_case_with_its_hint(words):
    forward, parts = WRONG_BLOCKS[words]
    for passed, reason, hint in _diagnoses(_block(forward, **parts)):
        assert not passed
        assert words in (hint or ""), (reason, hint)


def test_the_judge_refuses_outputs_that_are_not_what_the_call_returns():
    inputs = BLOCK.inputs(BLOCK.cases[0])
    outputs, _ = run_case(gpt.TransformerBlock, BLOCK.call, inputs)
    from autograder.oracles import oracle

    judge = oracle(BLOCK.id).judge
    assert judge(inputs, outputs) == (None, None)
    assert judge(inputs, {**outputs, "y": outputs["y"][:, :1]})[0]
    assert judge(inputs, {**outputs, "calls": np.ones(4)})[0]           # floats, not counts
    shifted = {**outputs, "y": outputs["y"] + np.float32(1e-3)}
    assert judge(inputs, shifted)[0]


# ----------------------------------------------------------------------------- WordPiece's merge rule


def _by_fractions(text, vocab_size):
    """The rule from its definition, independently of both implementations under test."""
    seqs = [list(chunk.encode()) for chunk in pretokenize(text)]
    merges = {}
    for new_id in range(256, vocab_size):
        units = Counter(t for seq in seqs for t in seq)
        pairs = Counter(p for seq in seqs for p in zip(seq, seq[1:]))
        if not pairs:
            break
        pair = max(pairs, key=lambda p: (Fraction(pairs[p], units[p[0]] * units[p[1]]), (-p[0], -p[1])))
        merges[pair] = new_id
        seqs = [bpe.merge_pair(seq, pair, new_id) for seq in seqs]
    return merges


@pytest.mark.parametrize("text", ["low lower lowest", "aaa aaa aab", "🙂🙂 日本語 naïve, naïve!",
                                  shakespeare_text()[:4_000]], ids=["low", "runs", "unicode", "shakespeare"])
def test_course_wordpiece_and_oracle_follow_the_definition(text):
    expected = _by_fractions(text, 320)
    assert bpe.train_wordpiece(text, 320) == expected
    assert _wordpiece(text, 320) == expected
    assert list(expected.values()) == list(range(256, 256 + len(expected)))


def test_wordpiece_differs_from_bpe_and_prefers_rare_pairs():
    text = shakespeare_text()[:20_000]
    wp, bp = bpe.train_wordpiece(text, 300), bpe.train_bpe(text, 300)
    assert list(wp) != list(bp)
    counts = Counter(p for chunk in pretokenize(text) for p in zip(chunk.encode(), chunk.encode()[1:]))
    first_wp, first_bp = next(iter(wp)), next(iter(bp))
    assert counts[first_wp] < counts[first_bp]


def test_the_librarys_wordpiece_trainer_learns_bpes_vocabulary():
    """Notebook 03 says so: tokenizers' WordPieceTrainer is its BpeTrainer with a ## prefix (ties aside)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = shakespeare_text()[:300_000].split("\n")
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bp = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    for tokenizer, trainer in [(wp, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[UNK]"], show_progress=False)),
                               (bp, trainers.BpeTrainer(vocab_size=2000, special_tokens=["[UNK]"],
                                                        continuing_subword_prefix="##", show_progress=False))]:
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.train_from_iterator(lines, trainer)
    assert len(set(wp.get_vocab()) & set(bp.get_vocab())) >= 1990


# ----------------------------------------------------------------------------- graded for real, and run as a learner runs them

UNBIASED_LAYER_NORM = '''
class LayerNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        var = x.var(-1, keepdim=True)                 # unbiased: divides by d - 1
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(var + self.eps) * self.weight + self.bias
'''


def test_a_wrong_layer_norm_fails_itself_and_gpt_with_a_note_but_not_the_block(tmp_path):
    record = grade_notebook(make_variant(tmp_path, "02_transformer__unbiased_ln", {"layer_norm": UNBIASED_LAYER_NORM}))
    by_id = {e["id"]: e for e in record["exercises"]}
    assert record["status"] == "graded", record["message"]
    assert "cell_errors" not in record, record["cell_errors"]
    assert by_id["transformer.layer_norm"]["score"] == 0 and "unbiased=False" in by_id["transformer.layer_norm"]["message"]
    assert by_id["transformer.block"]["status"] == "passed"           # graded on its wiring
    gpt_result = by_id["transformer.gpt"]
    assert gpt_result["score"] == 0 and "runs your `LayerNorm`" in gpt_result["message"], gpt_result
    assert "`TransformerBlock`" not in gpt_result["message"]           # the block passed: not named
    for other in ("transformer.feed_forward", "transformer.sinusoidal", "transformer.load_gpt2_weights"):
        assert by_id[other]["status"] == "passed", by_id[other]
    assert record["score"] == record["max_score"] - 5
