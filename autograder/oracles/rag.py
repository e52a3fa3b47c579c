"""Notebook 07, trusted side: references, judges and known mistakes of the retrieval exercises.

* ``bm25_scores``: ``bm25s`` with ``method="lucene"`` (Kamphuis et al., 2020), in float64.
* ``cosine_top_k``: ``sentence_transformers.util.semantic_search``.
* ``chunk_text``: a judge. It checks the invariants every chunker must keep (no chunk above
  ``max_tokens``, no empty chunk, the chunks with their overlaps removed give back the text's words
  in order) and names the first that breaks, then compares with the course's rule
  (``utils.retrieval.chunk_text``) and names a known mistake when the output matches one.
* ``reciprocal_rank_fusion``: a judge, because two documents whose fused scores are equal in exact
  arithmetic can differ in the last bit depending on the order of the sums: the same documents, the
  scores within 1e-9, best first, and near-ties (1e-12) ordered by the smaller id.
* ``recall_at_k``, ``mrr``, ``build_rag_prompt``: the course's reference, ``utils.retrieval``.
"""
from __future__ import annotations

import numpy as np

from ..compare import expect_array, mismatch
from ..manifests.rag import (
    BM25_SCORES,
    BUILD_RAG_PROMPT,
    CHUNK_TEXT,
    COSINE_TOP_K,
    MRR,
    RECALL_AT_K,
    RRF,
    pack_texts,
    token_names,
    unpack_lists,
    unpack_texts,
)
from ..spec import Detector, Oracle

# --------------------------------------------------------------------------- chunk_text


def _tokenizer(inputs):
    if int(inputs["tokenizer"]) == 1:
        from transformers import AutoTokenizer

        from utils.assets import minilm_dir

        return AutoTokenizer.from_pretrained(str(minilm_dir())).tokenize
    return str.split


def _chunk_args(inputs):
    return (bytes(np.asarray(inputs["text"], dtype=np.uint8)).decode("utf-8"), int(inputs["max_tokens"]),
            int(inputs["overlap"]), _tokenizer(inputs))


def _chunks_out(chunks, raised=False) -> dict:
    packed = pack_texts(chunks)
    return {"raised": np.asarray(raised), "bytes": packed["bytes"], "lengths": packed["lengths"]}


def _run_chunker(chunker, inputs):
    try:
        return _chunks_out(chunker(*_chunk_args(inputs)))
    except ValueError:
        return _chunks_out([], raised=True)


def chunk_reference(inputs):
    from utils.retrieval import chunk_text

    return _run_chunker(chunk_text, inputs)


def _chunk_variant(kind):
    """Known mistakes: ``no overlap``, ``word windows`` (fixed windows of words, sentences ignored),
    ``strict`` (a chunk is closed when it reaches max_tokens - 1), ``overlap in sentences``."""

    def chunker(text, max_tokens, overlap, tokenizer):
        from utils.retrieval import chunk_text

        if max_tokens < 1 or not 0 <= overlap < max_tokens:
            raise ValueError("invalid sizes")
        if kind == "no overlap":
            return chunk_text(text, max_tokens, 0, tokenizer)
        if kind == "strict":
            return chunk_text(text, max_tokens - 1, min(overlap, max_tokens - 2), tokenizer) if max_tokens > 1 else []
        if kind == "word windows":
            words = text.split()
            step = max_tokens - overlap
            return [" ".join(words[i:i + max_tokens]) for i in range(0, max(len(words) - overlap, 1), step)
                    if words[i:i + max_tokens]]
        raise AssertionError(kind)

    return lambda inputs: _run_chunker(chunker, inputs)


CHUNK_DETECTORS = (
    Detector("overlap ignored", _chunk_variant("no overlap"),
             "consecutive chunks share nothing: start each new chunk with the last whole sentences of the previous "
             "one, as many as fit in `overlap` tokens"),
    Detector("fixed word windows", _chunk_variant("word windows"),
             "these are fixed windows of words that cut sentences anywhere: pack WHOLE sentences "
             "(split_sentences) and cut only a sentence that alone is longer than max_tokens"),
    Detector("closed one token early", _chunk_variant("strict"),
             "chunks never reach max_tokens: a chunk may hold exactly max_tokens tokens (use <=, not <)"),
)


def _covers(text: str, chunks: list[str]) -> bool:
    """Are the chunks the text in order, each overlapping the previous one or starting right after it?

    Compared without whitespace (chunking may change it, and CJK text has none between sentences):
    chunk i must start inside chunk i - 1 (after its start) or right at its end, the first at the
    text's start, the last must end at the text's end. Every feasible placement is kept, so a
    repeated phrase cannot mislead the check.
    """
    flat = "".join(text.split())
    states = None                                   # feasible (start, end) of the previous chunk
    for chunk in ("".join(c.split()) for c in chunks):
        if states is None:
            states = {(0, len(chunk))} if flat.startswith(chunk) else set()
        else:
            states = {(p, p + len(chunk)) for start, end in states for p in range(start + 1, end + 1)
                      if flat.startswith(chunk, p)}
        if not states:
            return False
    return flat == "" if states is None else any(end == len(flat) for _, end in states)


def chunk_judge(inputs, got):
    for key, kind in (("bytes", "int"), ("lengths", "int"), ("raised", "bool")):
        problem = expect_array(got, key, kind)
        if problem:
            return problem, None
    lengths = got["lengths"]
    if lengths.ndim != 1 or (lengths < 0).any() or int(lengths.sum()) != got["bytes"].size:
        return "the chunks could not be read back (their byte lengths do not add up)", None
    expected = chunk_reference(inputs)
    if bool(expected["raised"]):
        if not bool(got["raised"]):
            return ("no ValueError for invalid sizes (max_tokens < 1, or overlap not in [0, max_tokens), or a single "
                    "word longer than max_tokens)"), "check the arguments first and raise ValueError with a clear message"
        return None, None
    if bool(got["raised"]):
        return "raised ValueError on valid arguments", None
    try:
        chunks = unpack_texts(got["bytes"], lengths)
    except UnicodeDecodeError:
        return "a chunk is not valid UTF-8", None
    text, max_tokens, overlap, tokenizer = _chunk_args(inputs)
    for i, chunk in enumerate(chunks):
        size = len(tokenizer(chunk))
        if size == 0:
            return f"chunk {i} is empty", "never emit an empty chunk (an empty text gives no chunks at all: [])"
        if size > max_tokens:
            return (f"chunk {i} has {size} tokens, more than max_tokens={max_tokens}",
                    "count tokens with len(tokenizer(...)), and cut a sentence that alone is longer than max_tokens "
                    "into pieces of whole words")
    if not _covers(text, chunks):
        return ("the chunks, with their overlaps removed, are not the text's words in order (words lost, repeated or "
                "changed)"), "every word of the text must be in a chunk, in order; join sentences with one space"
    want = unpack_texts(expected["bytes"], expected["lengths"])
    if chunks == want:
        return None, None
    first = next((i for i, (a, b) in enumerate(zip(chunks, want)) if a != b), min(len(chunks), len(want)))
    reason = f"{len(chunks)} chunks, expected {len(want)}; the first difference is at chunk {first}"
    for detector in CHUNK_DETECTORS:
        if mismatch(detector.produce(inputs), got, 0, 0) is None:
            return reason, detector.hint
    return reason, ("pack whole sentences greedily; when the next one does not fit, close the chunk and carry its "
                    "last whole sentences, at most `overlap` tokens and leaving room for the next sentence")


# --------------------------------------------------------------------------- bm25_scores


def _bm25_args(inputs):
    names = token_names(int(inputs["vocab"]))
    corpus = [[names[i] for i in doc] for doc in unpack_lists(inputs["corpus"], inputs["corpus_lengths"])]
    queries = [[names[i] for i in q] for q in unpack_lists(inputs["queries"], inputs["query_lengths"])]
    return queries, corpus, float(inputs["k1"]), float(inputs["b"])


def bm25_reference(inputs):
    """bm25s, Lucene's variant. bm25s cannot index an empty corpus or score a query none of whose
    tokens it knows: those rows are 0 by definition (the sum over the query's tokens is empty)."""
    import bm25s

    queries, corpus, k1, b = _bm25_args(inputs)
    scores = np.zeros((len(queries), len(corpus)), dtype=np.float64)
    if not corpus:
        return {"scores": scores}
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    retriever.index(corpus, show_progress=False)
    for row, query in enumerate(queries):
        if any(token in retriever.vocab_dict for token in query):
            scores[row] = retriever.get_scores(query)
    return {"scores": scores}


def _bm25_variant(kind):
    def produce(inputs):
        import math
        from collections import Counter

        queries, corpus, k1, b = _bm25_args(inputs)
        N = len(corpus)
        scores = np.zeros((len(queries), N), dtype=np.float64)
        if not N:
            return {"scores": scores}
        counts = [Counter(doc) for doc in corpus]
        lengths = np.array([len(doc) for doc in corpus], dtype=np.float64)
        avgdl = lengths.mean() or 1.0
        df = Counter(t for c in counts for t in c)
        for row, query in enumerate(queries):
            for token in (set(query) if kind == "unique query tokens" else query):
                n = df.get(token, 0)
                if not n:
                    continue
                if kind == "robertson idf":
                    idf = math.log((N - n + 0.5) / (n + 0.5))
                elif kind == "plain idf":
                    idf = math.log(N / n)
                else:
                    idf = math.log(1 + (N - n + 0.5) / (n + 0.5))
                tf = np.array([c.get(token, 0) for c in counts], dtype=np.float64)
                norm = k1 * (1 - b + b * lengths / avgdl)
                if kind == "no length normalisation":
                    norm = np.full(N, k1)
                factor = (k1 + 1) if kind == "(k1 + 1) numerator" else 1.0
                hit = tf > 0
                scores[row, hit] += idf * tf[hit] * factor / (tf[hit] + norm[hit])
        return {"scores": scores}

    return produce


# --------------------------------------------------------------------------- cosine_top_k


def cosine_reference(inputs):
    import torch
    from sentence_transformers.util import semantic_search

    queries, docs, k = inputs["queries"], inputs["docs"], int(inputs["k"])
    Q, N = queries.shape[0], docs.shape[0]
    k = min(k, N)
    if k == 0:
        return {"scores": np.zeros((Q, 0), dtype=np.float64), "indices": np.zeros((Q, 0), dtype=np.int64)}
    hits = semantic_search(torch.from_numpy(np.array(queries)), torch.from_numpy(np.array(docs)), top_k=k)
    return {"scores": np.asarray([[h["score"] for h in row] for row in hits], dtype=np.float64),
            "indices": np.asarray([[h["corpus_id"] for h in row] for row in hits], dtype=np.int64)}


def _cosine_variant(kind):
    def produce(inputs):
        queries, docs = inputs["queries"].astype(np.float64), inputs["docs"].astype(np.float64)
        k = min(int(inputs["k"]), docs.shape[0])
        if kind != "dot product":
            docs = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
        if kind == "cosine":
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        sims = queries @ docs.T
        order = np.argsort(sims if kind == "ascending" else -sims, axis=1, kind="stable")[:, :k]
        if kind == "ascending":
            sims = sims / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        return {"scores": np.take_along_axis(sims, order, axis=1), "indices": order.astype(np.int64)}

    return produce


# --------------------------------------------------------------------------- reciprocal_rank_fusion


def _rrf_args(inputs):
    rankings = unpack_lists(inputs["rankings"], inputs["lengths"])
    weights = [float(w) for w in inputs["weights"]] if len(inputs["weights"]) else None
    return rankings, int(inputs["k"]), weights


def _rrf_out(fused):
    return {"ids": np.asarray([d for d, _ in fused], dtype=np.int64),
            "scores": np.asarray([s for _, s in fused], dtype=np.float64)}


def rrf_expected(inputs):
    from utils.retrieval import reciprocal_rank_fusion

    rankings, k, weights = _rrf_args(inputs)
    return _rrf_out(reciprocal_rank_fusion(rankings, k=k, weights=weights))


def _rrf_variant(kind):
    def produce(inputs):
        rankings, k, weights = _rrf_args(inputs)
        weights = weights if weights and kind != "unweighted" else [1.0] * len(rankings)
        fused = {}
        for w, ranking in zip(weights, rankings):
            for rank, doc in enumerate(ranking, start=0 if kind == "rank from 0" else 1):
                fused[doc] = fused.get(doc, 0.0) + w / ((0 if kind == "k ignored" else k) + rank)
        if kind == "first seen":
            return _rrf_out(sorted(fused.items(), key=lambda item: -item[1]))
        return _rrf_out(sorted(fused.items(), key=lambda item: (-item[1], item[0])))

    return produce


RRF_DETECTORS = (
    Detector("ranks from 0", _rrf_variant("rank from 0"),
             "ranks start at 1: the best document of a list adds w / (k + 1), not w / k"),
    Detector("k ignored", _rrf_variant("k ignored"), "each list adds w / (k + rank): k is missing"),
    Detector("weights ignored", _rrf_variant("unweighted"),
             "the weights are ignored: ranking r adds weights[r] / (k + rank)"),
    Detector("ties in first-seen order", _rrf_variant("first seen"),
             "equal scores keep the order in which the documents were first seen: break ties by the smaller doc id, "
             "e.g. sorted(..., key=lambda item: (-score, doc))"),
)


def rrf_judge(inputs, got):
    want = rrf_expected(inputs)
    n = want["ids"].size
    for key, kind in (("ids", "int"), ("scores", "float")):
        problem = expect_array(got, key, kind, (n,))
        if problem:
            return problem + f" (one entry per document in any ranking: {n})", None
    ids, scores = got["ids"], got["scores"]

    def matched():
        if sorted(ids.tolist()) != sorted(want["ids"].tolist()):
            return "the fused list does not hold each document of the rankings exactly once"
        by_id = dict(zip(want["ids"].tolist(), want["scores"].tolist()))
        expected = np.asarray([by_id[i] for i in ids.tolist()])
        if not np.allclose(scores, expected, rtol=1e-9, atol=1e-12):
            return f"scores differ: max abs difference {np.max(np.abs(scores - expected)):.3g}"
        for i in range(n - 1):
            a, b = expected[i], expected[i + 1]
            if a < b - 1e-12 or (abs(a - b) <= 1e-12 and ids[i] > ids[i + 1]):
                return f"entries {i} and {i + 1} are out of order (best first; equal scores: smaller id first)"
        return None

    reason = matched()
    if reason is None:
        return None, None
    for detector in RRF_DETECTORS:
        wrong = detector.produce(inputs)
        if np.array_equal(wrong["ids"], ids) and np.allclose(wrong["scores"], scores, rtol=1e-9, atol=1e-12):
            return reason, detector.hint
    return reason, None


# --------------------------------------------------------------------------- recall_at_k, mrr


def _metric_args(inputs):
    retrieved = unpack_lists(inputs["retrieved"], inputs["retrieved_lengths"])
    relevant = [set(r) for r in unpack_lists(inputs["relevant"], inputs["relevant_lengths"])]
    return retrieved, relevant, int(inputs["k"])


def _metric(fn, inputs, with_k):
    retrieved, relevant, k = _metric_args(inputs)
    try:
        value = fn(retrieved, relevant, k) if with_k else fn(retrieved, relevant, k or None)
    except ValueError:
        return {"raised": np.asarray(True), "value": np.asarray(0.0)}
    return {"raised": np.asarray(False), "value": np.asarray(float(value))}


def recall_reference(inputs):
    from utils.retrieval import recall_at_k

    return _metric(recall_at_k, inputs, True)


def _need_relevant(relevant):
    if any(len(g) == 0 for g in relevant):
        raise ValueError("no relevant documents")


def _recall_variant(kind):
    def wrong(retrieved, relevant, k):
        _need_relevant(relevant)
        values = []
        for ranked, gold in zip(retrieved, relevant):
            top = ranked[:k]
            if kind == "precision":
                values.append(len(set(top) & gold) / k)
            elif kind == "hit rate":
                values.append(float(bool(set(top) & gold)))
            elif kind == "duplicates counted":
                values.append(sum(doc in gold for doc in top) / len(gold))
        return float(np.mean(values))

    return lambda inputs: _metric(wrong, inputs, True)


def mrr_reference(inputs):
    from utils.retrieval import mrr

    return _metric(mrr, inputs, False)


def _mrr_variant(kind):
    def wrong(retrieved, relevant, k=None):
        _need_relevant(relevant)
        total = 0.0
        for ranked, gold in zip(retrieved, relevant):
            ranked = ranked[:k] if k else ranked
            ranks = [r for r, doc in enumerate(ranked, start=1) if doc in gold]
            if not ranks:
                continue
            if kind == "last relevant":
                total += 1.0 / ranks[-1]
            elif kind == "all relevant":
                total += sum(1.0 / r for r in ranks) / len(ranks)
            elif kind == "rank from 0":
                total += 1.0 / (ranks[0] + 1)
        return total / len(retrieved)

    return lambda inputs: _metric(wrong, inputs, False)


# --------------------------------------------------------------------------- build_rag_prompt


def _prompt_out(fn, inputs):
    passages = unpack_texts(inputs["passages"], inputs["passage_lengths"])
    question = bytes(np.asarray(inputs["question"], dtype=np.uint8)).decode("utf-8")
    try:
        prompt = fn(question, passages)
    except ValueError:
        return {"raised": np.asarray(True), "prompt": np.zeros(0, dtype=np.uint8)}
    return {"raised": np.asarray(False), "prompt": np.frombuffer(prompt.encode("utf-8"), dtype=np.uint8).copy()}


def prompt_reference(inputs):
    from utils.retrieval import build_rag_prompt

    return _prompt_out(build_rag_prompt, inputs)


def _prompt_variant(kind):
    def wrong(question, passages):
        from utils.corpora import RAG_INSTRUCTION

        clean = (lambda s: " ".join(s.split())) if kind != "whitespace kept" else (lambda s: s)
        if not question.strip():
            raise ValueError("empty question")
        start = 0 if kind == "numbered from 0" else 1
        lines = [f"[{i}] {clean(p)}" for i, p in enumerate(passages, start=start)]
        sources = "\n".join(lines) if lines else "(none)"
        q = " ".join(question.split()) if kind != "whitespace kept" else question
        if kind == "question first":
            return f"{RAG_INSTRUCTION}\n\nQuestion: {q}\n\nSources:\n{sources}\nAnswer:"
        return f"{RAG_INSTRUCTION}\n\nSources:\n{sources}\n\nQuestion: {q}\nAnswer:"

    return lambda inputs: _prompt_out(wrong, inputs)


ORACLES = {
    CHUNK_TEXT.id: Oracle(judge=chunk_judge, detectors=CHUNK_DETECTORS),
    BM25_SCORES.id: Oracle(
        reference=bm25_reference,
        detectors=(
            Detector("Robertson's idf", _bm25_variant("robertson idf"),
                     "this is the classic idf ln((N - n + 0.5) / (n + 0.5)), which is negative for a token in more than "
                     "half the documents; Lucene's idf adds 1 inside the log: ln(1 + (N - n + 0.5) / (n + 0.5))"),
            Detector("idf ln(N / n)", _bm25_variant("plain idf"),
                     "idf is ln(N / n): BM25 uses ln(1 + (N - n + 0.5) / (n + 0.5))"),
            Detector("no length normalisation", _bm25_variant("no length normalisation"),
                     "document length is ignored: the saturation term is k1 * (1 - b + b * |D| / avgdl)"),
            Detector("(k1 + 1) in the numerator", _bm25_variant("(k1 + 1) numerator"),
                     "the scores are (k1 + 1) times too large: Lucene's variant drops the constant (k1 + 1) factor, "
                     "tf / (tf + k1 * (1 - b + b * |D| / avgdl))"),
            Detector("repeated query tokens counted once", _bm25_variant("unique query tokens"),
                     "a token that appears twice in the query counts twice: loop over the query's tokens, not over "
                     "set(query)"),
        ),
    ),
    COSINE_TOP_K.id: Oracle(
        reference=cosine_reference,
        detectors=(
            Detector("dot product", _cosine_variant("dot product"),
                     "these are dot products: divide the queries and the documents by their L2 norms first"),
            Detector("query not normalised", _cosine_variant("query only"),
                     "the ranking is right but the scores are not cosines: normalise the queries too"),
            Detector("worst first", _cosine_variant("ascending"),
                     "the least similar documents come first: sort by descending similarity"),
        ),
    ),
    RRF.id: Oracle(judge=rrf_judge, detectors=RRF_DETECTORS),
    RECALL_AT_K.id: Oracle(
        reference=recall_reference,
        detectors=(
            Detector("precision@k", _recall_variant("precision"),
                     "this is precision@k (divided by k): recall divides by the number of relevant documents"),
            Detector("hit rate", _recall_variant("hit rate"),
                     "this is the hit rate (1 if any relevant document is in the top k): recall counts the FRACTION "
                     "of the relevant documents found"),
            Detector("duplicates counted", _recall_variant("duplicates counted"),
                     "a relevant document retrieved twice is counted twice: intersect sets, "
                     "len(set(ranked[:k]) & relevant)"),
        ),
    ),
    MRR.id: Oracle(
        reference=mrr_reference,
        detectors=(
            Detector("last relevant", _mrr_variant("last relevant"),
                     "this uses the LAST relevant document: MRR takes the rank of the first one"),
            Detector("mean over relevant", _mrr_variant("all relevant"),
                     "this averages 1/rank over all relevant documents (closer to average precision): MRR takes the "
                     "first relevant document only"),
            Detector("ranks from 0", _mrr_variant("rank from 0"),
                     "ranks start at 1: a relevant document in first place gives 1, not 1/2"),
        ),
    ),
    BUILD_RAG_PROMPT.id: Oracle(
        reference=prompt_reference,
        detectors=(
            Detector("numbered from 0", _prompt_variant("numbered from 0"), "number the sources from [1], not [0]"),
            Detector("whitespace kept", _prompt_variant("whitespace kept"),
                     "put each passage (and the question) on one line: collapse its whitespace, newlines included, "
                     "with ' '.join(text.split())"),
            Detector("question before the sources", _prompt_variant("question first"),
                     "the sources come first, then the question right before 'Answer:'"),
        ),
    ),
}
