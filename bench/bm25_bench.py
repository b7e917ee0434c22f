"""BM25: queries/s (single thread, top-10) and index build speed against bm25s and rank_bm25.

Both engines get the same token lists, so the comparison is of scoring and selection only. The
real corpus is the packaged Wikipedia summaries (queries: their one-line descriptions); the
synthetic one is a Zipfian corpus of short documents.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import Row, median_seconds
from realm.app.corpus import wiki_summaries
from realm.retriever.analyzer import Analyzer
from realm.retriever.bm25 import BM25Index, BM25Params
from realm.retriever.topk import top_k


@dataclass(frozen=True, slots=True)
class Corpus:
    name: str
    documents: list[list[str]]
    queries: list[list[str]]


def wikipedia(limit: int, queries: int) -> Corpus:
    analyzer = Analyzer("en")
    documents = wiki_summaries(limit)
    tokens = [analyzer.tokens(f"{d.title}\n{d.text}") for d in documents]
    asked = [
        analyzer.tokens(d.metadata["description"])
        for d in documents
        if d.metadata.get("description")
    ]
    return Corpus(
        f"wikipedia summaries ({len(tokens):,} docs)", tokens, [q for q in asked if q][:queries]
    )


def zipfian(
    n_docs: int, queries: int, vocabulary: int = 200_000, length: int = 24, seed: int = 3
) -> Corpus:
    """Short documents whose terms follow Zipf's law, like real text."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocabulary + 1)
    weights = 1.0 / ranks**1.07
    weights /= weights.sum()
    terms = rng.choice(vocabulary, size=n_docs * length, p=weights)
    words = np.array([f"t{i}" for i in range(vocabulary)])[terms].reshape(n_docs, length).tolist()
    asked = rng.choice(vocabulary, size=(queries, 3), p=weights)
    return Corpus(
        f"synthetic Zipfian ({n_docs:,} docs)", words, [[f"t{t}" for t in q] for q in asked]
    )


def _realm_search(index: BM25Index, queries: Sequence[list[str]]) -> list[list[int]]:
    results = []
    for query in queries:
        scores = index.scores(query)
        rows, _ = top_k(scores, 10, index.matching_rows(scores))
        results.append(rows.tolist())
    return results


def _bm25s_search(model: bm25s.BM25, queries: Sequence[list[str]]) -> list[list[int]]:
    results: list[list[int]] = []
    for query in queries:
        known = [t for t in query if t in model.vocab_dict]
        if not known:
            results.append([])
            continue
        rows, scores = model.retrieve(
            [known], k=10, show_progress=False, backend_selection="numpy", n_threads=0
        )
        results.append([int(r) for r, s in zip(rows[0], scores[0], strict=True) if s > 0])
    return results


def _same_top10(
    realm: list[list[int]], peer: list[list[int]], index: BM25Index, queries: Sequence[list[str]]
) -> float:
    """Share of queries whose top-10 agree, counting a swap between equal scores as agreement."""
    same = 0
    for mine, theirs, query in zip(realm, peer, queries, strict=True):
        scores = index.scores(query)
        same += mine == theirs or (
            len(mine) == len(theirs)
            and np.allclose(np.sort(scores[mine]), np.sort(scores[theirs]), atol=1e-5)
        )
    return same / len(queries)


def run_corpus(corpus: Corpus, with_rank_bm25: bool) -> list[Row]:
    params = BM25Params()
    rows: list[Row] = []
    with threadpool_limits(1):
        realm_build = median_seconds(lambda: BM25Index.build(corpus.documents, params), repeats=3)

        def build_bm25s() -> bm25s.BM25:
            model = bm25s.BM25(method="lucene", k1=params.k1, b=params.b)
            model.index(corpus.documents, show_progress=False)
            return model

        peer_build = median_seconds(build_bm25s, repeats=3)
        index = BM25Index.build(corpus.documents, params)
        model = build_bm25s()
        realm_query = median_seconds(lambda: _realm_search(index, corpus.queries), repeats=3)
        peer_query = median_seconds(lambda: _bm25s_search(model, corpus.queries), repeats=3)
        agreement = _same_top10(
            _realm_search(index, corpus.queries),
            _bm25s_search(model, corpus.queries),
            index,
            corpus.queries,
        )
    n_docs, n_queries = len(corpus.documents), len(corpus.queries)
    rows.append(
        Row(
            f"BM25 queries/s, {corpus.name}",
            n_queries / realm_query,
            "bm25s (numpy)",
            n_queries / peer_query,
            "q/s",
            1.0,
        )
    )
    rows.append(
        Row(
            f"BM25 top-10 identical to bm25s, {corpus.name}",
            round(agreement * n_queries),
            "bm25s (numpy)",
            n_queries,
            "queries",
            1.0,
            note="ties (equal scores) may come in either order",
        )
    )
    rows.append(
        Row(
            f"BM25 build, {corpus.name}",
            n_docs / realm_build,
            "bm25s",
            n_docs / peer_build,
            "docs/s",
            1.0,
        )
    )
    if with_rank_bm25:
        from rank_bm25 import BM25Okapi

        sample = corpus.queries[:50]
        okapi = BM25Okapi(corpus.documents, k1=params.k1, b=params.b)
        peer = median_seconds(
            lambda: [np.argsort(-okapi.get_scores(q))[:10] for q in sample], repeats=1
        )
        mine = median_seconds(lambda: _realm_search(index, sample), repeats=3)
        rows.append(
            Row(
                f"BM25 queries/s, {corpus.name}",
                len(sample) / mine,
                "rank_bm25",
                len(sample) / peer,
                "q/s",
                None,
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    corpora = [
        wikipedia(2_000 if quick else 0, 300 if quick else 2_000),
        zipfian(30_000 if quick else 1_000_000, 300 if quick else 1_000),
    ]
    rows = []
    for corpus in corpora:
        rows += run_corpus(corpus, with_rank_bm25=len(corpus.documents) <= 20_000)
    return rows
