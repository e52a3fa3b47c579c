"""Byte-level BPE as in GPT-2, the reference code of notebook 03.

A tokenizer is two dicts:

* ``merges``: ``{(id_a, id_b): new_id}`` in the order the merges were learned (an earlier merge has a
  smaller ``new_id`` and is applied first);
* ``vocab``: ``{id: bytes}``, the bytes each id stands for.

A trained tokenizer starts from the 256 single bytes (``vocab[b] == bytes([b])``); the real GPT-2
tokenizer (:func:`gpt2_merges_and_vocab`) numbers its single bytes in another order, which is why
:func:`encode` looks the byte ids up in ``vocab``.

>>> merges = train_bpe("low lower lowest", 258)
>>> vocab = build_vocab(merges)
>>> [vocab[i] for i in merges.values()]
[b'lo', b'low']
>>> decode(encode("lowly", merges, vocab), vocab)
'lowly'
"""
from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
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


def get_pair_counts(ids) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs: ``[1, 2, 1, 2]`` -> ``{(1, 2): 2, (2, 1): 1}``."""
    return dict(Counter(zip(ids, ids[1:])))


def merge_pair(ids, pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` (left to right, no overlaps) with ``new_id``.

    >>> merge_pair([5, 5, 5, 1], (5, 5), 9)
    [9, 5, 1]
    """
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _best(counts: dict) -> tuple[int, int]:
    """The most frequent pair; on a tie, the smallest (id_a, id_b)."""
    return min(counts, key=lambda p: (-counts[p], p))


def train_bpe_naive(text: str, vocab_size: int, split: bool = True) -> dict[tuple[int, int], int]:
    """The definition of BPE training, recounting every pair after every merge (slow; for tests).

    ``split=False`` skips the pre-tokenisation (a known mistake: merges then cross word boundaries).
    """
    seqs = [list(chunk.encode("utf-8")) for chunk in (pretokenize(text) if split else [text])]
    merges: dict[tuple[int, int], int] = {}
    for new_id in range(256, vocab_size):
        counts: Counter = Counter()
        for seq in seqs:
            counts.update(zip(seq, seq[1:]))
        if not counts:
            break
        pair = _best(counts)
        merges[pair] = new_id
        seqs = [merge_pair(seq, pair, new_id) for seq in seqs]
    return merges


def train_bpe(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """Learn ``vocab_size - 256`` merges from ``text`` (fewer if no pair is left), GPT-2 style.

    Same result as :func:`train_bpe_naive`, but each merge only updates the counts of the words
    that contain the merged pair, and a heap finds the most frequent pair.
    """
    words = Counter(pretokenize(text))                       # chunk -> how often it occurs
    seqs = [list(word.encode("utf-8")) for word in words]
    freqs = list(words.values())
    counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) contain it
    for index, (seq, freq) in enumerate(zip(seqs, freqs)):
        for pair in zip(seq, seq[1:]):
            counts[pair] += freq
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merges: dict[tuple[int, int], int] = {}
    for new_id in range(256, vocab_size):
        while heap and counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)                              # a stale entry: its count has changed
        if not heap or -heap[0][0] <= 0:
            break
        pair = heap[0][1]
        merges[pair] = new_id
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for index in where.pop(pair):
            seq, freq = seqs[index], freqs[index]
            merged = merge_pair(seq, pair, new_id)
            if len(merged) == len(seq):
                continue
            for old in zip(seq, seq[1:]):
                delta[old] -= freq
            for new in zip(merged, merged[1:]):
                delta[new] += freq
                where[new].add(index)
            seqs[index] = merged
        for changed, amount in delta.items():
            if amount:
                counts[changed] += amount
                if counts[changed] > 0:
                    heapq.heappush(heap, (-counts[changed], changed))
        counts.pop(pair, None)
    return merges


def build_vocab(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    """``{id: bytes}`` of a trained tokenizer: the 256 bytes, then each merge's two parts joined."""
    vocab = {b: bytes([b]) for b in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def encode_chunk(data: bytes, merges: dict, byte_ids) -> list[int]:
    """BPE on one pre-tokenised chunk: apply the earliest-learned merge present until none applies."""
    ids = [byte_ids[b] for b in data]
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge_pair(ids, pair, merges[pair])
    return ids


def encode(text: str, merges: dict, vocab: dict[int, bytes]) -> list[int]:
    """Text -> ids: pre-tokenise, turn each chunk into byte ids, merge by priority (cached per chunk)."""
    byte_ids = [0] * 256
    for token_id, token in vocab.items():
        if len(token) == 1:
            byte_ids[token[0]] = token_id
    cache: dict[str, list[int]] = {}
    ids: list[int] = []
    for chunk in pretokenize(text):
        if chunk not in cache:
            cache[chunk] = encode_chunk(chunk.encode("utf-8"), merges, byte_ids)
        ids.extend(cache[chunk])
    return ids


def decode(ids, vocab: dict[int, bytes]) -> str:
    """Ids -> text: join the bytes first, then decode UTF-8 once (invalid bytes become U+FFFD)."""
    return b"".join(vocab[int(i)] for i in ids).decode("utf-8", errors="replace")


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
    >>> encode("Hello, how are you?", merges, vocab)
    [15496, 11, 703, 389, 345, 30]
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
