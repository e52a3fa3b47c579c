"""Notebook 03, trusted side: references and known mistakes of the BPE exercises.

Oracles: the Hugging Face GPT-2 tokenizer (``encode`` with GPT-2's real merges must give its ids
exactly) and, for training on the case's text, the course's reference ``utils.bpe.train_bpe``
(which the tests check against a naive trainer that recounts every pair). WordPiece's merge rule is
written out here (:func:`_wordpiece`, exact fractions); the tests check ``utils.bpe.train_wordpiece``,
the course's version for demos, against it.
"""
from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np

from ..manifests.tokenization import (
    DECODE,
    ENCODE,
    MERGE_PAIR,
    PAIR_COUNTS,
    TRAIN_BPE,
    TRAIN_WORDPIECE,
    _encode_text,
    _merges_and_vocab,
    _merges_arrays,
)
from ..spec import Detector, Oracle


def _text(inputs) -> str:
    return bytes(np.asarray(inputs["text"], dtype=np.uint8)).decode("utf-8")


def _pairs_out(counts) -> dict:
    keys = sorted(counts)
    return {"pairs": np.asarray(keys, dtype=np.int64).reshape(-1, 2),
            "counts": np.asarray([counts[k] for k in keys], dtype=np.int64)}


def pairs_reference(inputs):
    ids = [int(i) for i in inputs["ids"]]
    return _pairs_out(Counter(zip(ids, ids[1:])))


def _merge_variant(kind):
    def produce(inputs):
        ids, (a, b), new = [int(i) for i in inputs["ids"]], (int(x) for x in inputs["pair"]), int(inputs["new_id"])
        if kind == "right to left":
            ids = ids[::-1]
            a, b = b, a
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
                out.append(new)
                i += 1 if kind == "no skip" else 2
            else:
                out.append(ids[i])
                i += 1
        return {"ids": np.asarray(out[::-1] if kind == "right to left" else out, dtype=np.int64)}

    return produce


def merge_reference(inputs):
    from utils.bpe import merge_pair

    pair = (int(inputs["pair"][0]), int(inputs["pair"][1]))
    return {"ids": np.asarray(merge_pair([int(i) for i in inputs["ids"]], pair, int(inputs["new_id"])), dtype=np.int64)}


def train_reference(inputs):
    from utils.bpe import train_bpe

    return _merges_arrays(train_bpe(_text(inputs), int(inputs["vocab_size"])))


def _train_variant(split=True, unique=False, largest=False):
    def produce(inputs):
        from utils.bpe import merge_pair, pretokenize

        text, vocab_size = _text(inputs), int(inputs["vocab_size"])
        chunks = pretokenize(text) if split else [text]
        if unique:
            chunks = list(dict.fromkeys(chunks))
        seqs = [list(chunk.encode("utf-8")) for chunk in chunks]
        merges = {}
        for new_id in range(256, vocab_size):
            counts = Counter()
            for seq in seqs:
                counts.update(zip(seq, seq[1:]))
            if not counts:
                break
            pair = (max if largest else min)(counts, key=lambda p: (counts[p], p) if largest else (-counts[p], p))
            merges[pair] = new_id
            seqs = [merge_pair(seq, pair, new_id) for seq in seqs]
        return _merges_arrays(merges)

    return produce


def _wordpiece(text, vocab_size, score="wordpiece", unique=False):
    """WordPiece's merge rule, written out: recount the pairs and the single tokens of the current
    segmentation (each chunk weighted by its frequency), merge the pair with the highest
    count(ab) / (count(a) count(b)) as an exact fraction, ties to the smallest pair. ``score`` and
    ``unique`` give known mistakes."""
    from utils.tokenization import pretokenize

    chunks = Counter(pretokenize(text))
    if unique:
        chunks = Counter(dict.fromkeys(chunks, 1))
    seqs = [(list(chunk.encode("utf-8")), freq) for chunk, freq in chunks.items()]
    merges = {}
    for new_id in range(256, vocab_size):
        pairs, units = Counter(), Counter()
        for seq, freq in seqs:
            for token in seq:
                units[token] += freq
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        if score == "wordpiece":
            value = {p: Fraction(n, units[p[0]] * units[p[1]]) for p, n in pairs.items()}
        elif score == "first only":
            value = {p: Fraction(n, units[p[0]]) for p, n in pairs.items()}
        else:  # BPE's rule
            value = dict(pairs)
        best = max(value.values())
        pair = min(p for p, v in value.items() if v == best)
        merges[pair] = new_id
        merged = []
        for seq, freq in seqs:
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            merged.append((out, freq))
        seqs = merged
    return merges


def _wordpiece_variant(**kind):
    return lambda inputs: _merges_arrays(_wordpiece(_text(inputs), int(inputs["vocab_size"]), **kind))


def encode_reference(inputs):
    text = _text(inputs)
    if int(inputs["tokenizer"]) == 0:  # the oracle: Hugging Face's GPT-2 tokenizer
        from utils.assets import load_gpt2_tokenizer

        return {"ids": np.asarray(load_gpt2_tokenizer()(text).input_ids, dtype=np.int64)}
    from utils.bpe import encode

    merges, vocab = _merges_and_vocab(inputs)
    return {"ids": np.asarray(encode(text, merges, vocab), dtype=np.int64)}


def _encode_variant(kind):
    def produce(inputs):
        from utils.bpe import encode_chunk, merge_pair, pretokenize

        merges, vocab = _merges_and_vocab(inputs)
        byte_ids = [0] * 256
        for token_id, token in vocab.items():
            if len(token) == 1:
                byte_ids[token[0]] = token_id
        text = _text(inputs)
        if kind == "no pre-tokenisation":
            return {"ids": np.asarray(encode_chunk(text.encode("utf-8"), merges, byte_ids), dtype=np.int64)}
        ids = []
        for chunk in pretokenize(text):  # "leftmost": merge the first mergeable pair, not the earliest learned
            seq = [byte_ids[b] for b in chunk.encode("utf-8")]
            while True:
                pair = next((p for p in zip(seq, seq[1:]) if p in merges), None)
                if pair is None:
                    break
                seq = merge_pair(seq, pair, merges[pair])
            ids += seq
        return {"ids": np.asarray(ids, dtype=np.int64)}

    return produce


def decode_reference(inputs):
    from utils.bpe import decode

    _, vocab = _merges_and_vocab(inputs)
    return {"text": _encode_text(decode(inputs["ids"], vocab))}


def _decode_variant(kind):
    def produce(inputs):
        _, vocab = _merges_and_vocab(inputs)
        pieces = [vocab[int(i)] for i in inputs["ids"]]
        if kind == "per token":
            text = "".join(p.decode("utf-8", errors="replace") for p in pieces)
        else:
            text = b"".join(pieces).decode("utf-8", errors="ignore")
        return {"text": _encode_text(text)}

    return produce


ORACLES = {
    PAIR_COUNTS.id: Oracle(
        reference=pairs_reference,
        detectors=(
            Detector("non-overlapping pairs", lambda inputs: _pairs_out(Counter(zip(list(inputs["ids"])[::2], list(inputs["ids"])[1::2]))),
                     "only every other pair is counted: pairs overlap, use zip(ids, ids[1:])"),
        ),
    ),
    MERGE_PAIR.id: Oracle(
        reference=merge_reference,
        detectors=(
            Detector("no skip", _merge_variant("no skip"),
                     "after a merge, skip BOTH ids of the pair (i += 2); otherwise the second id is kept or merged again"),
            Detector("right to left", _merge_variant("right to left"),
                     "overlapping occurrences are merged from the right: scan left to right, so x x x "
                     "becomes [new, x]"),
        ),
    ),
    TRAIN_BPE.id: Oracle(
        reference=train_reference,
        detectors=(
            Detector("no pre-tokenisation", _train_variant(split=False),
                     "merges cross word boundaries: split the text with GPT-2's regex (pretokenize) and count "
                     "pairs inside each chunk only"),
            Detector("word frequencies ignored", _train_variant(unique=True),
                     "each distinct chunk is counted once: a pair's count must include how often its chunk "
                     "occurs (Counter(pretokenize(text)) gives the frequencies)"),
            Detector("ties to the largest pair", _train_variant(largest=True),
                     "on a tie the largest pair wins: pick the most frequent pair and, among equals, the smallest "
                     "(a, b), e.g. min(counts, key=lambda p: (-counts[p], p))"),
        ),
    ),
    TRAIN_WORDPIECE.id: Oracle(
        reference=_wordpiece_variant(),
        detectors=(
            Detector("BPE's frequency rule", _wordpiece_variant(score="count"),
                     "these are BPE's merges (the most frequent pair): WordPiece divides each pair's count by the "
                     "counts of its two parts, score = count(ab) / (count(a) * count(b))"),
            Detector("divided by count(a) only", _wordpiece_variant(score="first only"),
                     "the score is divided by count(a) only: divide by both parts' counts, "
                     "count(ab) / (count(a) * count(b))"),
            Detector("chunk frequencies ignored", _wordpiece_variant(unique=True),
                     "each distinct chunk is counted once: weight the counts of pairs AND of single tokens by how "
                     "often the chunk occurs (Counter(pretokenize(text)))"),
        ),
    ),
    ENCODE.id: Oracle(
        reference=encode_reference,
        detectors=(
            Detector("no pre-tokenisation", _encode_variant("no pre-tokenisation"),
                     "BPE runs over the whole text: split it first with pretokenize (GPT-2's regex) and encode "
                     "each chunk on its own, so no token crosses a word boundary"),
            Detector("leftmost pair first", _encode_variant("leftmost"),
                     "merges are applied to the leftmost mergeable pair; apply the pair learned EARLIEST "
                     "(smallest merges[pair]) first, wherever it is: min(pairs, key=lambda p: merges.get(p, inf))"),
        ),
    ),
    DECODE.id: Oracle(
        reference=decode_reference,
        detectors=(
            Detector("token by token", _decode_variant("per token"),
                     "each token is decoded on its own, which breaks characters whose bytes span two tokens: "
                     "join all the bytes first (b''.join(...)), then decode once"),
            Detector("errors ignored", _decode_variant("ignore"),
                     "invalid bytes are dropped: decode with errors='replace' so they show up as U+FFFD"),
        ),
    ),
}
