"""Notebook 03 - tokenization: byte-level BPE from scratch, checked against GPT-2's real tokenizer.

Texts travel as UTF-8 bytes (``uint8`` arrays) and a learned tokenizer as arrays of merges, so every
input is plain data. Oracles: the Hugging Face GPT-2 tokenizer (``encode`` with GPT-2's real merges
must give its ids exactly) and, for training on the case's text, the course's reference
``utils.bpe.train_bpe`` (which the tests check against a naive trainer that recounts every pair);
WordPiece's merge rule is written out in the oracle with exact fractions.
"""
from __future__ import annotations

import numpy as np

from ..spec import Assignment, Case, Exercise

# --------------------------------------------------------------------------- shared input helpers

WORDS = ("the", "cat", "sat", "on", "mat", "low", "lower", "lowest", "newer", "wider", "hello", "world",
         "don't", "I'm", "we'll", "café", "naïve", "日本", "語", "🙂", "42", "2024", "!", "?", ",", ".",
         "the", "the", "and", "and", "a")
SEPARATORS = (" ", " ", " ", " ", " ", "  ", "\n", "\n\n", " \t")

# Fixed texts for GPT-2's encoder: contractions, digits, emoji, CJK, runs of spaces and newlines.
GPT2_TEXTS = (
    "Hello, how are you?",
    "I'm sure they'll say it's fine, don't you think?  We've 3 cats & 12,345.67 dogs...\n\nthe end",
    "Unicode: naïve café, 日本語のテキスト, emoji 🙂🍕👩‍👩‍👧 and symbols ∑∫√.\n\n\tTabs,     five spaces   \n",
    "   leading spaces, trailing spaces   \n\n\nnewlines\r\nCRLF  ",
    "def f(x):\n    return x**2  # code, with    indentation\n",
)


def _encode_text(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def random_text(rng, n_words: int) -> str:
    """Words from a small pool (Zipf-like repeats, Unicode, digits) joined by varied whitespace."""
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    picks = rng.choice(len(WORDS), size=n_words, p=weights / weights.sum())
    seps = rng.choice(len(SEPARATORS), size=n_words)
    return "".join(WORDS[w] + SEPARATORS[s] for w, s in zip(picks, seps))


def _merges_from(inputs) -> dict:
    return {(int(a), int(b)): int(n) for (a, b), n in zip(inputs["merges"], inputs["merge_ids"])}


def _merges_arrays(merges: dict) -> dict:
    return {"merges": np.asarray(list(merges), dtype=np.int64).reshape(-1, 2),
            "merge_ids": np.asarray(list(merges.values()), dtype=np.int64)}


# --------------------------------------------------------------------------- tokenization.pair_counts


def pairs_inputs(params, rng):
    return {"ids": rng.integers(0, params["alphabet"], size=params["n"]).astype(np.int64)}


def call_pairs(fn, inputs):
    import numpy as np

    counts = fn([int(i) for i in inputs["ids"]])
    if not isinstance(counts, dict):
        raise TypeError(f"get_pair_counts must return a dict {{(a, b): count}}, got {type(counts).__name__}")
    keys = sorted((int(a), int(b)) for a, b in counts)
    return {"pairs": np.asarray(keys, dtype=np.int64).reshape(-1, 2),
            "counts": np.asarray([int(counts[k]) for k in keys], dtype=np.int64)}


PAIR_COUNTS = Exercise(
    id="tokenization.pair_counts",
    callable="get_pair_counts",
    points=1,
    summary="{(a, b): how often b follows a} over a list of ids",
    make_inputs=pairs_inputs,
    call=call_pairs,
    cases=(Case("12 ids, alphabet 3", {"n": 12, "alphabet": 3}), Case("one id", {"n": 1, "alphabet": 5}),
           Case("200 ids, alphabet 20", {"n": 200, "alphabet": 20}, hidden=True)),
    reference_impl="utils.bpe:get_pair_counts",
)

# --------------------------------------------------------------------------- tokenization.merge_pair


def merge_inputs(params, rng):
    ids = rng.integers(0, params["alphabet"], size=params["n"]).astype(np.int64)
    pair = np.asarray(params.get("pair", (int(ids[0]), int(ids[1]))), dtype=np.int64)
    if params.get("runs"):  # a run of the pair's first id, e.g. merging (7, 7) in 7 7 7
        ids[2:6] = pair[0]
    return {"ids": ids, "pair": pair, "new_id": np.asarray(256)}


def call_merge(fn, inputs):
    import numpy as np

    pair = (int(inputs["pair"][0]), int(inputs["pair"][1]))
    out = fn([int(i) for i in inputs["ids"]], pair, int(inputs["new_id"]))
    return {"ids": np.asarray(list(out), dtype=np.int64)}


MERGE_PAIR = Exercise(
    id="tokenization.merge_pair",
    callable="merge_pair",
    points=1,
    summary="replace each occurrence of `pair` in ids, left to right and without overlaps, with new_id",
    make_inputs=merge_inputs,
    call=call_merge,
    cases=(Case("20 ids", {"n": 20, "alphabet": 3}),
           Case("overlapping run (x, x)", {"n": 10, "alphabet": 4, "pair": (2, 2), "runs": True}),
           Case("100 ids", {"n": 100, "alphabet": 6}, hidden=True),
           Case("odd run", {"n": 9, "alphabet": 3, "pair": (1, 1), "runs": True}, hidden=True)),
    reference_impl="utils.bpe:merge_pair",
)

# --------------------------------------------------------------------------- tokenization.train_bpe


def train_inputs(params, rng):
    return {"text": _encode_text(random_text(rng, params["words"])), "vocab_size": np.asarray(params["vocab_size"])}


def call_train(fn, inputs):
    import numpy as np

    text = bytes(np.asarray(inputs["text"], dtype=np.uint8)).decode("utf-8")
    merges = fn(text, int(inputs["vocab_size"]))
    if not isinstance(merges, dict):
        raise TypeError(f"train_bpe must return a dict {{(a, b): new_id}}, got {type(merges).__name__}")
    return {"merges": np.asarray([(int(a), int(b)) for a, b in merges], dtype=np.int64).reshape(-1, 2),
            "merge_ids": np.asarray([int(v) for v in merges.values()], dtype=np.int64)}


TRAIN_BPE = Exercise(
    id="tokenization.train_bpe",
    callable="train_bpe",
    points=3,
    summary="learn vocab_size - 256 merges {(a, b): new_id} on GPT-2's pre-tokenised chunks; ties -> smallest pair",
    make_inputs=train_inputs,
    call=call_train,
    cases=(
        Case("40 words, vocab 270", {"words": 40, "vocab_size": 270}),
        Case("300 words, vocab 320", {"words": 300, "vocab_size": 320}),
        Case("3000 words, vocab 420", {"words": 3000, "vocab_size": 420}, hidden=True),
        Case("10 words, vocab 400 (runs out of pairs)", {"words": 10, "vocab_size": 400}, hidden=True),
    ),
    library=("train_from_iterator", "BpeTrainer"),
    reference_impl="utils.bpe:train_bpe",
)

# --------------------------------------------------------------------------- tokenization.train_wordpiece


TRAIN_WORDPIECE = Exercise(
    id="tokenization.train_wordpiece",
    callable="train_wordpiece",
    points=2,
    summary="train_bpe with WordPiece's rule: merge the pair with the highest count(ab) / (count(a) count(b)); "
            "ties -> smallest pair",
    make_inputs=train_inputs,
    call=call_train,
    cases=(
        Case("40 words, vocab 270", {"words": 40, "vocab_size": 270}),
        Case("300 words, vocab 300", {"words": 300, "vocab_size": 300}),
        Case("1500 words, vocab 340", {"words": 1500, "vocab_size": 340}, hidden=True),
        Case("10 words, vocab 400 (runs out of pairs)", {"words": 10, "vocab_size": 400}, hidden=True),
    ),
    library=("WordPieceTrainer",),
    reference_impl="utils.bpe:train_wordpiece",
    builds_on=("tokenization.pair_counts", "tokenization.merge_pair"),
)

# --------------------------------------------------------------------------- tokenization.encode / decode


def _tokenizer_inputs(params, rng):
    """``tokenizer`` 0: GPT-2's real merges; 1: merges learned on a random text (in the inputs)."""
    if params["tokenizer"] == "gpt2":
        return {"tokenizer": np.asarray(0)}
    from utils.bpe import train_bpe

    merges = train_bpe(random_text(rng, params.get("train_words", 400)), params.get("vocab_size", 330))
    return {"tokenizer": np.asarray(1), **_merges_arrays(merges)}


def encode_inputs(params, rng):
    inputs = _tokenizer_inputs(params, rng)
    text = GPT2_TEXTS[params["text"]] if "text" in params else random_text(rng, params["words"])
    inputs["text"] = _encode_text(text)
    return inputs


def _merges_and_vocab(inputs):
    from utils.tokenization import build_vocab, gpt2_merges_and_vocab

    if int(inputs["tokenizer"]) == 0:
        return gpt2_merges_and_vocab()
    merges = _merges_from(inputs)
    return merges, build_vocab(merges)


def call_encode(fn, inputs):
    import numpy as np

    if int(inputs["tokenizer"]) == 0:
        from utils.tokenization import gpt2_merges_and_vocab

        merges, vocab = gpt2_merges_and_vocab()
    else:
        merges = {(int(a), int(b)): int(n) for (a, b), n in zip(inputs["merges"], inputs["merge_ids"])}
        vocab = {b: bytes([b]) for b in range(256)}
        for (a, b), n in merges.items():
            vocab[n] = vocab[a] + vocab[b]
    text = bytes(np.asarray(inputs["text"], dtype=np.uint8)).decode("utf-8")
    ids = fn(text, merges, vocab)
    return {"ids": np.asarray([int(i) for i in ids], dtype=np.int64)}


ENCODE = Exercise(
    id="tokenization.encode",
    callable="encode",
    points=3,
    summary="text -> ids: GPT-2 pre-tokenisation, bytes -> byte ids, then merges by priority (earliest learned first)",
    make_inputs=encode_inputs,
    call=call_encode,
    cases=(
        Case("GPT-2: Hello, how are you?", {"tokenizer": "gpt2", "text": 0}),
        Case("GPT-2: contractions and digits", {"tokenizer": "gpt2", "text": 1}),
        Case("GPT-2: emoji, CJK, whitespace", {"tokenizer": "gpt2", "text": 2}),
        Case("trained tokenizer, random text", {"tokenizer": "trained", "words": 60}),
        Case("GPT-2: leading spaces, CRLF", {"tokenizer": "gpt2", "text": 3}, hidden=True),
        Case("GPT-2: code", {"tokenizer": "gpt2", "text": 4}, hidden=True),
        Case("GPT-2: random text", {"tokenizer": "gpt2", "words": 300}, hidden=True),
        Case("trained tokenizer, long text", {"tokenizer": "trained", "words": 500, "vocab_size": 400}, hidden=True),
    ),
    library=("GPT2Tokenizer", "GPT2TokenizerFast", "AutoTokenizer", "load_gpt2_tokenizer", "get_encoding"),
    reference_impl="utils.bpe:encode",
)


def decode_inputs(params, rng):
    from utils.bpe import encode

    inputs = _tokenizer_inputs(params, rng)
    merges, vocab = _merges_and_vocab(inputs)
    text = GPT2_TEXTS[params["text"]] if "text" in params else random_text(rng, params["words"])
    ids = encode(text, merges, vocab)
    if params.get("cut"):  # stop in the middle of a multi-byte character
        ids = ids[: params["cut"]]
    inputs["ids"] = np.asarray(ids, dtype=np.int64)
    return inputs


def call_decode(fn, inputs):
    import numpy as np

    if int(inputs["tokenizer"]) == 0:
        from utils.tokenization import gpt2_merges_and_vocab

        _, vocab = gpt2_merges_and_vocab()
    else:
        vocab = {b: bytes([b]) for b in range(256)}
        for (a, b), n in zip(inputs["merges"], inputs["merge_ids"]):
            vocab[int(n)] = vocab[int(a)] + vocab[int(b)]
    text = fn([int(i) for i in inputs["ids"]], vocab)
    if not isinstance(text, str):
        raise TypeError(f"decode must return a str, got {type(text).__name__}")
    return {"text": np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()}


DECODE = Exercise(
    id="tokenization.decode",
    callable="decode",
    points=1,
    summary="ids -> str: join the tokens' bytes, then decode UTF-8 once with errors='replace'",
    make_inputs=decode_inputs,
    call=call_decode,
    cases=(
        Case("GPT-2: emoji and CJK", {"tokenizer": "gpt2", "text": 2}),
        Case("GPT-2: cut inside an emoji", {"tokenizer": "gpt2", "text": 2, "cut": 31}),
        Case("trained tokenizer", {"tokenizer": "trained", "words": 80}),
        Case("GPT-2: random text", {"tokenizer": "gpt2", "words": 200}, hidden=True),
    ),
    library=("GPT2Tokenizer", "GPT2TokenizerFast", "AutoTokenizer", "load_gpt2_tokenizer"),
    reference_impl="utils.bpe:decode",
)

ASSIGNMENT = Assignment(
    notebook="03_tokenization",
    title="Tokenization",
    exercises=(PAIR_COUNTS, MERGE_PAIR, TRAIN_BPE, ENCODE, DECODE, TRAIN_WORDPIECE),
    references=("utils.bpe",),
)
