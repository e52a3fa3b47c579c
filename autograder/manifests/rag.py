"""Notebook 07 - retrieval-augmented generation: chunking, BM25, cosine top-k, rank fusion, retrieval
metrics and the RAG prompt.

Texts travel as UTF-8 bytes (``uint8`` arrays); a list of texts as their bytes joined plus an array
of byte lengths; lists of token or document ids as a flat ``int64`` array plus lengths. Oracles:
``bm25s`` (Lucene's BM25) for ``bm25_scores``, ``sentence_transformers.util.semantic_search`` for
``cosine_top_k``; the other exercises are checked against the course's reference (``utils.retrieval``)
and ``chunk_text`` and ``reciprocal_rank_fusion`` by judges that state the broken invariant first.
"""
from __future__ import annotations

import numpy as np

from ..spec import Assignment, Case, Exercise

# --------------------------------------------------------------------------- packing helpers


def pack_texts(texts) -> dict:
    data = [t.encode("utf-8") for t in texts]
    return {"bytes": np.frombuffer(b"".join(data), dtype=np.uint8).copy(),
            "lengths": np.asarray([len(d) for d in data], dtype=np.int64)}


def unpack_texts(data, lengths) -> list[str]:
    raw, out, start = bytes(np.asarray(data, dtype=np.uint8)), [], 0
    for n in np.asarray(lengths, dtype=np.int64):
        out.append(raw[start:start + int(n)].decode("utf-8"))
        start += int(n)
    return out


def pack_lists(lists) -> dict:
    flat = [int(x) for items in lists for x in items]
    return {"flat": np.asarray(flat, dtype=np.int64), "lengths": np.asarray([len(items) for items in lists], dtype=np.int64)}


def unpack_lists(flat, lengths) -> list[list[int]]:
    out, start = [], 0
    for n in np.asarray(lengths, dtype=np.int64):
        out.append([int(x) for x in flat[start:start + int(n)]])
        start += int(n)
    return out


def _text(inputs, key="text") -> str:
    return bytes(np.asarray(inputs[key], dtype=np.uint8)).decode("utf-8")


# --------------------------------------------------------------------------- rag.chunk_text

WORDS = ("the", "river", "population", "capital", "of", "and", "a", "mountain", "exports", "is", "in", "3.5",
         "68,512,806", "km", "café", "naïve", "Zürich", "São", "Paulo", "日本", "rain", "economy", "sq", "e.g.",
         "coastline", "was", "founded", "1958", "U.S.", "élan", "crops", "it", "this")
ENDS = (".", ".", ".", "!", "?")


def random_sentences(rng, n: int, long_every: int = 0) -> list[str]:
    """Sentences of 3-14 words (Unicode, numbers with dots, abbreviations), one in ``long_every`` of 25-40."""
    sentences = []
    for i in range(n):
        length = int(rng.integers(25, 41)) if long_every and i % long_every == long_every - 1 else int(rng.integers(3, 15))
        words = [WORDS[int(j)] for j in rng.integers(0, len(WORDS), size=length)]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + ENDS[int(rng.integers(len(ENDS)))])
    return sentences


def chunk_inputs(params, rng):
    if "fixed" in params:
        text = params["fixed"]
    else:
        seps = (" ", " ", " ", "\n", "  ", "\n\n")
        parts = random_sentences(rng, params["sentences"], params.get("long_every", 0))
        text = "".join(s + seps[int(rng.integers(len(seps)))] for s in parts)
    return {"text": np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy(),
            "max_tokens": np.asarray(params["max_tokens"]), "overlap": np.asarray(params.get("overlap", 0)),
            "tokenizer": np.asarray(1 if params.get("tokenizer") == "wordpiece" else 0)}


def call_chunk(fn, inputs):
    import numpy as np

    text = bytes(np.asarray(inputs["text"], dtype=np.uint8)).decode("utf-8")
    if int(inputs["tokenizer"]) == 1:
        from transformers import AutoTokenizer

        from utils.assets import minilm_dir

        tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir())).tokenize   # MiniLM's WordPiece tokens
    else:
        tokenizer = str.split
    try:
        chunks = fn(text, int(inputs["max_tokens"]), int(inputs["overlap"]), tokenizer)
    except ValueError:
        return {"raised": True, "bytes": np.zeros(0, dtype=np.uint8), "lengths": np.zeros(0, dtype=np.int64)}
    if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
        raise TypeError(f"chunk_text must return a list of str, got {type(chunks).__name__}")
    data = [c.encode("utf-8") for c in chunks]
    return {"raised": False, "bytes": np.frombuffer(b"".join(data), dtype=np.uint8).copy(),
            "lengths": np.asarray([len(d) for d in data], dtype=np.int64)}


CHUNK_TEXT = Exercise(
    id="rag.chunk_text",
    callable="chunk_text",
    points=3,
    summary="pack whole sentences greedily into chunks of <= max_tokens tokens; carry the last whole sentences "
            "(<= overlap tokens) into the next chunk; cut only sentences longer than max_tokens",
    make_inputs=chunk_inputs,
    call=call_chunk,
    cases=(
        Case("12 sentences, 20 words, no overlap", {"sentences": 12, "max_tokens": 20}),
        Case("30 sentences, 24 words, overlap 8", {"sentences": 30, "max_tokens": 24, "overlap": 8}),
        Case("long sentences are cut, overlap 5", {"sentences": 12, "max_tokens": 16, "overlap": 5, "long_every": 4}),
        Case("WordPiece tokens, overlap 10", {"sentences": 20, "max_tokens": 40, "overlap": 10, "tokenizer": "wordpiece"}),
        Case("empty text", {"fixed": "  \n ", "max_tokens": 10}),
        Case("overlap >= max_tokens raises ValueError", {"sentences": 3, "max_tokens": 8, "overlap": 8}),
        Case("200 sentences, 64 words, overlap 16", {"sentences": 200, "max_tokens": 64, "overlap": 16}, hidden=True),
        Case("long sentences, tiny window", {"sentences": 25, "max_tokens": 7, "overlap": 3, "long_every": 3}, hidden=True),
        Case("WordPiece, long sentences", {"sentences": 40, "max_tokens": 30, "overlap": 12, "long_every": 5,
                                           "tokenizer": "wordpiece"}, hidden=True),
        Case("Japanese and one word", {"fixed": "雨です。晴れ。 One. 3.5 km!", "max_tokens": 2, "overlap": 1}, hidden=True),
        Case("max_tokens 0 raises ValueError", {"sentences": 2, "max_tokens": 0}, hidden=True),
    ),
    library=("RecursiveCharacterTextSplitter", "SentenceSplitter", "TokenTextSplitter"),
    reference_impl="utils.retrieval:chunk_text",
)

# --------------------------------------------------------------------------- rag.bm25_scores


def token_names(n: int) -> list[str]:
    """The vocabulary of the BM25 cases: ``w0, w1, ...``, every seventh one non-ASCII."""
    return [f"mot{i}é" if i % 7 == 3 else f"w{i}" for i in range(n)]


def bm25_inputs(params, rng):
    V, n_docs = params["vocab"], params["docs"]
    p = 1.0 / np.arange(1, V + 1) ** 1.1
    p /= p.sum()
    docs = [rng.choice(V, size=int(rng.integers(params.get("min_len", 0), params["max_len"] + 1)), p=p) for _ in range(n_docs)]
    queries = [rng.choice(V + 5, size=int(rng.integers(1, 6))) for _ in range(params["queries"])]  # some unknown tokens
    queries.append(np.asarray([0, 0, 1]))      # a repeated token counts twice
    queries.append(np.asarray([], dtype=np.int64))   # an empty query scores 0 everywhere
    corpus, query = pack_lists(docs), pack_lists(queries)
    return {"corpus": corpus["flat"], "corpus_lengths": corpus["lengths"], "queries": query["flat"],
            "query_lengths": query["lengths"], "vocab": np.asarray(V + 5), "k1": np.asarray(params.get("k1", 1.5)),
            "b": np.asarray(params.get("b", 0.75))}


def call_bm25(fn, inputs):
    import numpy as np

    names = [f"mot{i}é" if i % 7 == 3 else f"w{i}" for i in range(int(inputs["vocab"]))]

    def lists(flat, lengths):
        out, start = [], 0
        for n in lengths:
            out.append([names[int(i)] for i in flat[start:start + int(n)]])
            start += int(n)
        return out

    corpus = lists(inputs["corpus"], inputs["corpus_lengths"])
    queries = lists(inputs["queries"], inputs["query_lengths"])
    scores = fn(queries, corpus, k1=float(inputs["k1"]), b=float(inputs["b"]))
    return {"scores": np.asarray(scores, dtype=np.float64)}


BM25_SCORES = Exercise(
    id="rag.bm25_scores",
    callable="bm25_scores",
    points=3,
    summary="(Q, N) Okapi BM25 scores, Lucene's idf ln(1 + (N - n + 0.5)/(n + 0.5)) and tf/(tf + k1(1 - b + b|D|/avgdl))",
    make_inputs=bm25_inputs,
    call=call_bm25,
    cases=(
        Case("8 documents, 6 queries", {"vocab": 12, "docs": 8, "max_len": 10, "queries": 4}),
        Case("60 documents, k1=0.9, b=0.4", {"vocab": 40, "docs": 60, "max_len": 30, "queries": 8, "k1": 0.9, "b": 0.4}),
        Case("empty corpus", {"vocab": 5, "docs": 0, "max_len": 3, "queries": 2}),
        Case("500 documents", {"vocab": 300, "docs": 500, "max_len": 80, "queries": 20}, hidden=True),
        Case("b=1, k1=2, short and empty documents", {"vocab": 6, "docs": 30, "max_len": 2, "queries": 5,
                                                       "k1": 2.0, "b": 1.0}, hidden=True),
        Case("b=0", {"vocab": 50, "docs": 40, "max_len": 20, "queries": 6, "b": 0.0}, hidden=True),
    ),
    library=("bm25s", "BM25Okapi", "rank_bm25", "BM25("),
    reference_impl="utils.retrieval:bm25_scores",
)

# --------------------------------------------------------------------------- rag.cosine_top_k


def cosine_inputs(params, rng):
    Q, N, d = params["shape"]
    docs = rng.standard_normal((N, d)).astype(np.float32) * rng.uniform(0.2, 5.0, size=(N, 1)).astype(np.float32)
    queries = rng.standard_normal((Q, d)).astype(np.float32) * 3
    if params.get("zero") and N:
        docs[N // 2] = 0.0               # a zero vector: similarity 0 with everything
    return {"queries": queries, "docs": docs, "k": np.asarray(params["k"])}


def call_cosine(fn, inputs):
    import numpy as np

    scores, indices = fn(np.array(inputs["queries"]), np.array(inputs["docs"]), int(inputs["k"]))
    return {"scores": np.asarray(scores, dtype=np.float64), "indices": np.asarray(indices).astype(np.int64)}


COSINE_TOP_K = Exercise(
    id="rag.cosine_top_k",
    callable="cosine_top_k",
    points=2,
    summary="(scores, indices), both (Q, min(k, N)): the k documents with the highest cosine similarity, best first",
    make_inputs=cosine_inputs,
    call=call_cosine,
    cases=(
        Case("3 queries, 20 documents, k=5", {"shape": (3, 20, 8), "k": 5}),
        Case("k larger than the corpus, a zero vector", {"shape": (2, 4, 6), "k": 10, "zero": True}),
        Case("empty corpus", {"shape": (2, 0, 6), "k": 3}),
        Case("384-d, 3,000 documents", {"shape": (5, 3000, 384), "k": 10, "zero": True}, hidden=True),
        Case("one query, k=1", {"shape": (1, 50, 16), "k": 1}, hidden=True),
    ),
    atol=1e-5,
    library=("semantic_search", "cos_sim", "faiss"),
    reference_impl="utils.retrieval:cosine_top_k",
)

# --------------------------------------------------------------------------- rag.reciprocal_rank_fusion


def rrf_inputs(params, rng):
    rankings = [rng.permutation(params["pool"])[: int(rng.integers(1, params["length"] + 1))]
                for _ in range(params["rankings"])]
    packed = pack_lists(rankings)
    weights = rng.uniform(0.2, 2.0, size=params["rankings"]) if params.get("weighted") else np.zeros(0)
    return {"rankings": packed["flat"], "lengths": packed["lengths"], "k": np.asarray(params.get("k", 60)),
            "weights": weights}


def call_rrf(fn, inputs):
    import numpy as np

    rankings, start = [], 0
    for n in inputs["lengths"]:
        rankings.append([int(x) for x in inputs["rankings"][start:start + int(n)]])
        start += int(n)
    if len(inputs["weights"]):
        fused = fn(rankings, k=int(inputs["k"]), weights=[float(w) for w in inputs["weights"]])
    else:
        fused = fn(rankings, k=int(inputs["k"]))
    fused = list(fused)
    return {"ids": np.asarray([int(doc) for doc, _ in fused], dtype=np.int64),
            "scores": np.asarray([float(score) for _, score in fused], dtype=np.float64)}


RRF = Exercise(
    id="rag.reciprocal_rank_fusion",
    callable="reciprocal_rank_fusion",
    points=2,
    summary="[(doc, sum_r w_r / (k + rank_r(doc)))], rank from 1, best first, ties to the smaller doc id",
    make_inputs=rrf_inputs,
    call=call_rrf,
    cases=(
        Case("two rankings of 5", {"rankings": 2, "pool": 8, "length": 5}),
        Case("three rankings, k=1", {"rankings": 3, "pool": 12, "length": 8, "k": 1}),
        Case("weighted", {"rankings": 2, "pool": 10, "length": 6, "weighted": True}),
        Case("five rankings of 100", {"rankings": 5, "pool": 300, "length": 100}, hidden=True),
        Case("weighted, k=10", {"rankings": 4, "pool": 40, "length": 30, "weighted": True, "k": 10}, hidden=True),
    ),
    reference_impl="utils.retrieval:reciprocal_rank_fusion",
)

# --------------------------------------------------------------------------- rag.recall_at_k, rag.mrr


def metric_inputs(params, rng):
    n_queries, pool = params["queries"], params["pool"]
    retrieved = [rng.permutation(pool)[: int(rng.integers(1, params["length"] + 1))] for _ in range(n_queries)]
    if params.get("duplicates"):
        retrieved = [np.concatenate([r[:2], r[:2], r[2:]]) for r in retrieved]
    relevant = [rng.choice(pool, size=int(rng.integers(1, params["max_relevant"] + 1)), replace=False)
                for _ in range(n_queries)]
    if params.get("no_relevant"):
        relevant[-1] = relevant[-1][:0]
    got, gold = pack_lists(retrieved), pack_lists(relevant)
    return {"retrieved": got["flat"], "retrieved_lengths": got["lengths"], "relevant": gold["flat"],
            "relevant_lengths": gold["lengths"], "k": np.asarray(params.get("k", 0))}


def call_recall(fn, inputs):
    import numpy as np

    def lists(flat, lengths):
        out, start = [], 0
        for n in lengths:
            out.append([int(x) for x in flat[start:start + int(n)]])
            start += int(n)
        return out

    retrieved = lists(inputs["retrieved"], inputs["retrieved_lengths"])
    relevant = [set(r) for r in lists(inputs["relevant"], inputs["relevant_lengths"])]
    try:
        value = fn(retrieved, relevant, int(inputs["k"]))
    except ValueError:
        return {"raised": True, "value": np.asarray(0.0)}
    return {"raised": False, "value": np.asarray(float(value))}


def call_mrr(fn, inputs):
    import numpy as np

    def lists(flat, lengths):
        out, start = [], 0
        for n in lengths:
            out.append([int(x) for x in flat[start:start + int(n)]])
            start += int(n)
        return out

    retrieved = lists(inputs["retrieved"], inputs["retrieved_lengths"])
    relevant = [set(r) for r in lists(inputs["relevant"], inputs["relevant_lengths"])]
    k = int(inputs["k"])
    try:
        value = fn(retrieved, relevant, k=k) if k else fn(retrieved, relevant)
    except ValueError:
        return {"raised": True, "value": np.asarray(0.0)}
    return {"raised": False, "value": np.asarray(float(value))}


RECALL_AT_K = Exercise(
    id="rag.recall_at_k",
    callable="recall_at_k",
    points=1,
    summary="mean over queries of |relevant ∩ top-k retrieved| / |relevant|; ValueError for a query without relevant documents",
    make_inputs=metric_inputs,
    call=call_recall,
    cases=(
        Case("10 queries, k=3", {"queries": 10, "pool": 12, "length": 8, "max_relevant": 3, "k": 3}),
        Case("k beyond the lists, duplicates", {"queries": 6, "pool": 10, "length": 4, "max_relevant": 4, "k": 20,
                                                "duplicates": True}),
        Case("a query without relevant documents", {"queries": 3, "pool": 8, "length": 5, "max_relevant": 2, "k": 2,
                                                    "no_relevant": True}),
        Case("200 queries, k=10", {"queries": 200, "pool": 60, "length": 30, "max_relevant": 5, "k": 10}, hidden=True),
        Case("k=1, duplicates", {"queries": 50, "pool": 5, "length": 5, "max_relevant": 3, "k": 1, "duplicates": True},
             hidden=True),
    ),
    reference_impl="utils.retrieval:recall_at_k",
)

MRR = Exercise(
    id="rag.mrr",
    callable="mrr",
    points=1,
    summary="mean over queries of 1/rank of the first relevant document (rank from 1; 0 if none in the top k)",
    make_inputs=metric_inputs,
    call=call_mrr,
    cases=(
        Case("10 queries", {"queries": 10, "pool": 10, "length": 10, "max_relevant": 4}),
        Case("k=2", {"queries": 10, "pool": 12, "length": 8, "max_relevant": 2, "k": 2}),
        Case("a query without relevant documents", {"queries": 3, "pool": 8, "length": 5, "max_relevant": 2,
                                                    "no_relevant": True}),
        Case("200 queries, k=10", {"queries": 200, "pool": 60, "length": 30, "max_relevant": 5, "k": 10}, hidden=True),
        Case("100 queries, long lists", {"queries": 100, "pool": 200, "length": 150, "max_relevant": 2}, hidden=True),
    ),
    reference_impl="utils.retrieval:mrr",
)

# --------------------------------------------------------------------------- rag.build_rag_prompt

PROMPT_CASES = {
    "three": ("What is the capital of France?",
              ["France, Government. Capital: name: Paris.", "France, People and Society. Population: total: 68,512,806.",
               "Spain, Government. Capital: name: Madrid."]),
    "unicode": ("  Wie heißt die Hauptstadt\nvon Côte d'Ivoire? ",
                ["Côte d'Ivoire, Government.\nCapital: name: Yamoussoukro;\n\tnote: Abidjan is the seat.",
                 "  日本, Geography.  Area: 377,915 sq km.  "]),
    "none": ("What is the population of Tuvalu?", []),
    "empty question": ("   ", ["A passage."]),
}


def prompt_inputs(params, rng):
    if "fixed" in params:
        question, passages = PROMPT_CASES[params["fixed"]]
    else:
        sentences = random_sentences(rng, params["passages"] + 1)
        question, passages = sentences[0].rstrip(".!") + "?", sentences[1:]
        passages = [p.replace(" ", "\n", 1) if i % 2 else p for i, p in enumerate(passages)]
    packed = pack_texts(passages)
    return {"question": np.frombuffer(question.encode("utf-8"), dtype=np.uint8).copy(), "passages": packed["bytes"],
            "passage_lengths": packed["lengths"]}


def call_prompt(fn, inputs):
    import numpy as np

    raw, passages, start = bytes(np.asarray(inputs["passages"], dtype=np.uint8)), [], 0
    for n in inputs["passage_lengths"]:
        passages.append(raw[start:start + int(n)].decode("utf-8"))
        start += int(n)
    question = bytes(np.asarray(inputs["question"], dtype=np.uint8)).decode("utf-8")
    try:
        prompt = fn(question, passages)
    except ValueError:
        return {"raised": True, "prompt": np.zeros(0, dtype=np.uint8)}
    if not isinstance(prompt, str):
        raise TypeError(f"build_rag_prompt must return a str, got {type(prompt).__name__}")
    return {"raised": False, "prompt": np.frombuffer(prompt.encode("utf-8"), dtype=np.uint8).copy()}


BUILD_RAG_PROMPT = Exercise(
    id="rag.build_rag_prompt",
    callable="build_rag_prompt",
    points=1,
    summary="RAG_INSTRUCTION, a blank line, 'Sources:' and one '[i] passage' line each (from 1), a blank line, "
            "'Question: ...', 'Answer:'",
    make_inputs=prompt_inputs,
    call=call_prompt,
    cases=(
        Case("three passages", {"fixed": "three"}),
        Case("non-ASCII, newlines inside", {"fixed": "unicode"}),
        Case("no passages", {"fixed": "none"}),
        Case("an empty question raises ValueError", {"fixed": "empty question"}),
        Case("eight random passages", {"passages": 8}, hidden=True),
        Case("one random passage", {"passages": 1}, hidden=True),
    ),
    reference_impl="utils.retrieval:build_rag_prompt",
)

ASSIGNMENT = Assignment(
    notebook="07_rag",
    title="Retrieval-augmented generation",
    exercises=(CHUNK_TEXT, BM25_SCORES, COSINE_TOP_K, RRF, RECALL_AT_K, MRR, BUILD_RAG_PROMPT),
    references=("utils.retrieval",),
)
