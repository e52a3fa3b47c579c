"""Byte-level BPE as in GPT-2: the reference solutions of notebook 03 (hidden while it is graded).

A tokenizer is ``merges`` and ``vocab`` (see ``utils.tokenization``). A trained tokenizer starts
from the 256 single bytes (``vocab[b] == bytes([b])``); the real GPT-2 tokenizer
(``utils.tokenization.gpt2_merges_and_vocab``) numbers its single bytes in another order, which is
why :func:`encode` looks the byte ids up in ``vocab``.

>>> merges = train_bpe("low lower lowest", 258)
>>> vocab = build_vocab(merges)
>>> [vocab[i] for i in merges.values()]
[b'lo', b'low']
>>> decode(encode("lowly", merges, vocab), vocab)
'lowly'
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict

from .tokenization import build_vocab, pretokenize  # noqa: F401  (build_vocab: used in the examples)


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


def train_wordpiece(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """WordPiece's merge rule on the same byte-level chunks as :func:`train_bpe`: merge the pair with
    the highest ``count(ab) / (count(a) * count(b))`` (ties: the smallest pair), recounting after
    each merge (every merge changes the counts of its two parts, so a heap of scores goes stale).

    ``count(a)`` is how often token ``a`` occurs in the current segmentation of the corpus (chunk
    frequencies included), ``count(ab)`` how often ``b`` directly follows ``a``.

    >>> train_wordpiece("low lower lowest", 258)
    {(115, 116): 256, (101, 114): 257}
    """
    words = Counter(pretokenize(text))
    seqs = [list(word.encode("utf-8")) for word in words]
    freqs = list(words.values())
    merges: dict[tuple[int, int], int] = {}
    for new_id in range(256, vocab_size):
        pairs: Counter = Counter()
        units: Counter = Counter()
        for seq, freq in zip(seqs, freqs):
            for token in seq:
                units[token] += freq
            for pair in zip(seq, seq[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        pair = min(pairs, key=lambda p: (-pairs[p] / (units[p[0]] * units[p[1]]), p))
        merges[pair] = new_id
        seqs = [merge_pair(seq, pair, new_id) if len(seq) > 1 else seq for seq in seqs]
    return merges


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


