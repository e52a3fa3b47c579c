"""What the course shares about tokenizers: GPT-2's pre-tokenisation, its byte-to-character map,
its real merges and vocabulary (read from OpenAI's files), and library tokenizers to compare with.

A tokenizer is two dicts:

* ``merges``: ``{(id_a, id_b): new_id}`` in the order the merges were learned (an earlier merge has a
  smaller ``new_id`` and is applied first);
* ``vocab``: ``{id: bytes}``, the bytes each id stands for.

Notebook 03's BPE (training, encoding, decoding) is in ``utils.bpe``, which its grading hides.

>>> pretokenize("Hello, how are you?")
['Hello', ',', ' how', ' are', ' you', '?']
>>> build_vocab({(108, 111): 256, (256, 119): 257})[257]
b'low'
"""
from __future__ import annotations

import json
from functools import lru_cache

import regex

# GPT-2's pre-tokenisation (OpenAI's encoder.py): contractions, letters, numbers, other symbols,
# each optionally preceded by ONE space; runs of whitespace stay together except for the space
# before a word. BPE never merges across these chunks.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)


def pretokenize(text: str) -> list[str]:
    """GPT-2's chunks: ``"Hello, how are you?"`` -> ``['Hello', ',', ' how', ' are', ' you', '?']``."""
    return _SPLIT.findall(text)


def build_vocab(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    """``{id: bytes}`` of a trained tokenizer: the 256 bytes, then each merge's two parts joined."""
    vocab = {b: bytes([b]) for b in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab



def vocab_id(token: str, vocab: dict[int, bytes]) -> int:
    """The id of a token written as GPT-2 prints it (``"Ġhow"``: a space, then "how")."""
    byte_of = {char: b for b, char in bytes_to_unicode().items()}
    wanted = bytes(byte_of[c] for c in token)
    return next(i for i, piece in vocab.items() if piece == wanted)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable ASCII/Latin-1 map to themselves, the
    others (space, control characters, ...) to characters from U+0100 on. Space -> 'Ġ' (U+0120)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def _gpt2() -> tuple[dict, dict]:
    from .assets import gpt2_vocab_files

    encoder_path, merges_path = gpt2_vocab_files()
    encoder = json.loads(encoder_path.read_text(encoding="utf-8"))      # printable token -> id
    byte_of = {char: b for b, char in bytes_to_unicode().items()}
    vocab = {token_id: bytes(byte_of[c] for c in token) for token, token_id in encoder.items()
             if token != "<|endoftext|>"}
    merges = {}
    for line in merges_path.read_text(encoding="utf-8").splitlines()[1:]:  # first line: a version
        if line.strip():
            left, right = line.split(" ")
            merges[(encoder[left], encoder[right])] = encoder[left + right]
    return merges, vocab


def gpt2_merges_and_vocab() -> tuple[dict[tuple[int, int], int], dict[int, bytes]]:
    """The real GPT-2 tokenizer (50,000 merges, 50,256 byte tokens) as ``(merges, vocab)``.

    >>> merges, vocab = gpt2_merges_and_vocab()
    >>> len(merges), len(vocab), vocab[15496], merges[(vocab_id("Ġh", vocab), vocab_id("ow", vocab))]
    (50000, 50256, b'Hello', 703)
    """
    merges, vocab = _gpt2()
    return dict(merges), dict(vocab)


def train_library_tokenizer(kind: str, texts, vocab_size: int):
    """A ``tokenizers.Tokenizer`` of ``kind`` "BPE" (GPT-2's byte-level set-up), "WordPiece" (BERT's)
    or "Unigram" (SentencePiece's), trained on ``texts`` (an iterable of strings)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "BPE":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    elif kind == "WordPiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False)
    elif kind == "Unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>",
                                          show_progress=False)
    else:
        raise ValueError(f"kind must be BPE, WordPiece or Unigram, not {kind!r}")
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer
