"""The reference code of notebooks 02 and 03 against the real thing (no kernels).

``utils.gpt.GPT`` must be GPT-2 (``GPT2LMHeadModel``'s logits), and ``utils.bpe`` must be GPT-2's
tokenizer (the Hugging Face tokenizer's ids), round-trip any string, and train the same merges
incrementally as by recounting.
"""
from __future__ import annotations

import pytest
import torch

from utils import bpe, gpt, models, tokenization
from utils.assets import load_gpt2_tokenizer, shakespeare_text

TRICKY = [
    "Hello, how are you?",
    "emoji 🙂🍕 and a family 👩‍👩‍👧, flags 🇫🇷",
    "日本語のテキスト, 中文, 한국어, العربية, עברית",
    "runs   of    spaces, trailing   ",
    "   leading",
    "\n\nnewlines\n\n\nand\r\nCRLF\ttabs\t\t",
    "control \x00\x07 and \u00a0non-breaking\u2009spaces",
    "I'm sure they'll say it's 3.14159, isn't it? WE'LL SEE.",
    "def f(x):\n    return x ** 2  # code\n",
    "",
    " ",
]


@pytest.fixture(scope="module")
def gpt2_tables():
    return tokenization.gpt2_merges_and_vocab()


@pytest.fixture(scope="module")
def hf_gpt2():
    return load_gpt2_tokenizer()


def test_reference_gpt_reproduces_gpt2lmheadmodel():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = models.gpt2_config(vocab_size=97, n_positions=24, d_model=48, n_layers=3, n_heads=6)
    theirs = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make every parameter matter: non-trivial LayerNorms and biases
        for name, param in theirs.named_parameters():
            param.add_(0.1 * torch.randn_like(param))
    ours = gpt.load_gpt2_weights(gpt.GPT.from_config(config), theirs.state_dict()).eval()
    assert ours.lm_head.weight is ours.wte.weight
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    ids = torch.randint(0, 97, (3, 24))
    with torch.no_grad():
        difference = (ours(ids) - theirs(ids).logits).abs().max().item()
    assert difference < 1e-5


def test_reference_layer_norm_and_gelu_match_pytorch():
    x = 3 + 2 * torch.randn(4, 7, 16)
    ln = gpt.LayerNorm(16)
    torch.testing.assert_close(ln(x), torch.nn.functional.layer_norm(x, (16,)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gpt.gelu_tanh(x), torch.nn.functional.gelu(x, approximate="tanh"))


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_encode_gives_the_hugging_face_gpt2_ids_and_round_trips(gpt2_tables, hf_gpt2, text):
    merges, vocab = gpt2_tables
    ids = bpe.encode(text, merges, vocab)
    assert ids == hf_gpt2(text).input_ids
    assert bpe.decode(ids, vocab) == text


def test_encode_matches_hugging_face_on_shakespeare(gpt2_tables, hf_gpt2):
    merges, vocab = gpt2_tables
    text = shakespeare_text()[100_000:130_000]
    assert bpe.encode(text, merges, vocab) == hf_gpt2(text).input_ids


def test_incremental_training_gives_the_naive_merges():
    text = shakespeare_text()[:6_000] + "".join(TRICKY)
    fast = bpe.train_bpe(text, 400)
    assert fast == bpe.train_bpe_naive(text, 400)
    assert list(fast.values()) == list(range(256, 400))


def test_training_stops_when_no_pair_is_left_and_round_trips():
    merges = bpe.train_bpe("aaa bbb", 300)
    assert bpe.train_bpe_naive("aaa bbb", 300) == merges and len(merges) < 44
    merges = bpe.train_bpe(shakespeare_text()[:3_000], 320)
    vocab = tokenization.build_vocab(merges)
    for text in TRICKY:
        assert bpe.decode(bpe.encode(text, merges, vocab), vocab) == text


def test_bytes_to_unicode_is_gpt2s():
    mapping = tokenization.bytes_to_unicode()
    assert len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("A")] == "A"
