"""Notebook 07's reference solutions: chunking, BM25, cosine top-k, rank fusion, retrieval metrics
and the RAG prompt.

This is the course's version of 07's graded exercises, used by the demos of a learner who has not
solved an exercise yet (``use``), by the benchmark and by later notebooks. While notebook 07 is
graded the sandbox leaves this module out, so nothing a kernel imports at start-up may import it.
The oracles check these functions against libraries where one exists (``bm25s`` for BM25,
``sentence_transformers.util.semantic_search`` for cosine top-k); the tests do too.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from utils.corpora import RAG_INSTRUCTION, split_sentences


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text))


def _pieces(sentence: str, max_tokens: int, tokenizer) -> list[str]:
    """A sentence that fits, or its words packed greedily into pieces of at most max_tokens tokens."""
    if _count(tokenizer, sentence) <= max_tokens:
        return [sentence]
    pieces, current = [], []
    for word in sentence.split():
        if _count(tokenizer, word) > max_tokens:
            raise ValueError(f"the word {word[:40]!r} alone has more than max_tokens={max_tokens} tokens")
        if current and _count(tokenizer, " ".join(current + [word])) > max_tokens:
            pieces.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        pieces.append(" ".join(current))
    return pieces


def chunk_text(text, max_tokens, overlap=0, tokenizer=str.split):
    """Split ``text`` into chunks of at most ``max_tokens`` tokens, on sentence boundaries where possible.

    The rule (the grader checks it exactly): split the text with ``split_sentences``; cut a sentence
    longer than ``max_tokens`` into pieces of whole words, each as long as fits; then pack the
    sentences (and pieces) in order, greedily, joined by one space. When the next sentence does
    not fit, close the chunk and start the next one with the LAST whole sentences of the closed
    chunk whose tokens add up to at most ``overlap`` (as many as fit, possibly none, and never so
    many that the next sentence does not fit after them).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap must be in [0, max_tokens), got overlap={overlap}, max_tokens={max_tokens}")
    units = [piece for sentence in split_sentences(text) for piece in _pieces(sentence, max_tokens, tokenizer)]
    sizes = [_count(tokenizer, unit) for unit in units]
    chunks, current = [], []          # current: indices of the units in the open chunk
    for i, size in enumerate(sizes):
        if current and sum(sizes[j] for j in current) + size > max_tokens:
            chunks.append(" ".join(units[j] for j in current))
            carried, total = [], 0
            for j in reversed(current):
                if total + sizes[j] > overlap or total + sizes[j] + size > max_tokens:
                    break
                carried.insert(0, j)
                total += sizes[j]
            current = carried
        current.append(i)
    if current:
        chunks.append(" ".join(units[j] for j in current))
    return chunks


def bm25_scores(query_tokens, corpus_tokens, k1=1.5, b=0.75):
    """Okapi BM25, Lucene's variant: a ``(Q, N)`` float64 array, one row per query.

    idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5)), with n_t the number of documents containing t;
    score(q, D) = sum over the tokens t of q (repeats count again) of
    idf(t) * f(t, D) / (f(t, D) + k1 * (1 - b + b * |D| / avgdl)).
    """
    n_docs = len(corpus_tokens)
    scores = np.zeros((len(query_tokens), n_docs), dtype=np.float64)
    if n_docs == 0:
        return scores
    counts = [Counter(doc) for doc in corpus_tokens]
    lengths = np.array([len(doc) for doc in corpus_tokens], dtype=np.float64)
    avgdl = lengths.mean()
    norm = k1 * (1 - b + b * lengths / avgdl) if avgdl > 0 else np.full(n_docs, k1)   # (N,)
    df = Counter(token for c in counts for token in c)
    for q, query in enumerate(query_tokens):
        for token in query:
            if token not in df:
                continue
            idf = math.log(1 + (n_docs - df[token] + 0.5) / (df[token] + 0.5))
            tf = np.array([c.get(token, 0) for c in counts], dtype=np.float64)     # (N,)
            hit = tf > 0                       # (an empty document with b = 1 has norm 0: 0 / 0 there)
            scores[q, hit] += idf * tf[hit] / (tf[hit] + norm[hit])
    return scores


def cosine_top_k(query_emb, doc_embs, k):
    """The ``k`` documents most similar to each query by cosine similarity: ``(scores, indices)``.

    query_emb: (Q, d); doc_embs: (N, d). Both (Q, min(k, N)), best first; a zero vector has
    similarity 0 with everything.
    """
    queries = np.asarray(query_emb, dtype=np.float32)
    docs = np.asarray(doc_embs, dtype=np.float32)
    k = min(int(k), docs.shape[0])
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)   # (Q, d)
    d = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)         # (N, d)
    sims = q @ d.T                                                                    # (Q, N)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]                           # (Q, k)
    return np.take_along_axis(sims, order, axis=1), order


def reciprocal_rank_fusion(rankings, k=60, weights=None):
    """Fuse ranked lists of document ids: ``[(doc_id, score), ...]``, best first.

    score(d) = sum over the rankings r that contain d of weights[r] / (k + rank_r(d)), rank from 1;
    ties go to the smaller doc id.
    """
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict = {}
    for weight, ranking in zip(weights, rankings):
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def _check_relevant(relevant):
    for i, gold in enumerate(relevant):
        if len(gold) == 0:
            raise ValueError(f"query {i} has no relevant documents: recall and MRR are undefined for it")


def recall_at_k(retrieved, relevant, k):
    """Mean over queries of |relevant ∩ top k retrieved| / |relevant|."""
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} result lists for {len(relevant)} queries")
    if not retrieved:
        raise ValueError("no queries")
    _check_relevant(relevant)
    return float(np.mean([len(set(gold) & set(list(ranked)[:k])) / len(set(gold))
                          for ranked, gold in zip(retrieved, relevant)]))


def mrr(retrieved, relevant, k=None):
    """Mean reciprocal rank: the mean over queries of 1 / (rank of the first relevant document),
    0 when none is in the top ``k`` (all of the list when ``k`` is None)."""
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} result lists for {len(relevant)} queries")
    if not retrieved:
        raise ValueError("no queries")
    _check_relevant(relevant)
    total = 0.0
    for ranked, gold in zip(retrieved, relevant):
        gold = set(gold)
        for rank, doc in enumerate(list(ranked)[:k] if k is not None else ranked, start=1):
            if doc in gold:
                total += 1.0 / rank
                break
    return total / len(retrieved)


def build_rag_prompt(question, passages):
    """The prompt of a grounded answer: the instruction, numbered sources, the question."""
    question = " ".join(str(question).split())
    if not question:
        raise ValueError("the question is empty")
    lines = [f"[{i}] {' '.join(str(p).split())}" for i, p in enumerate(passages, start=1)]
    sources = "\n".join(lines) if lines else "(none)"
    return f"{RAG_INSTRUCTION}\n\nSources:\n{sources}\n\nQuestion: {question}\nAnswer:"
