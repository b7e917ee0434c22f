"""BM25 against the formula by hand and against bm25s (an independent implementation)."""

import math
from pathlib import Path

import bm25s
import numpy as np
import pytest

from realm.app.beir import read_corpus, read_queries
from realm.retriever.analyzer import Analyzer
from realm.retriever.bm25 import BM25Index, BM25Params
from realm.retriever.topk import top_k
from tests.conftest import fixture_documents


def _lucene(query: list[str], docs: list[list[str]], k1: float, b: float) -> list[float]:
    """DESIGN.md's formula, term by term, with no shared code."""
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    scores = []
    for doc in docs:
        total = 0.0
        for term in query:
            df = sum(term in d for d in docs)
            if df == 0 or term not in doc:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = doc.count(term)
            total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(total)
    return scores


@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (0.9, 0.4), (2.0, 1.0), (1.5, 0.0)])
def test_scores_match_the_formula(k1: float, b: float) -> None:
    docs = [["wing", "lift", "wing"], ["lift", "drag"], ["heat", "slab", "heat", "heat"], ["drag"]]
    index = BM25Index.build(docs, BM25Params(k1=k1, b=b))
    for query in (["wing"], ["lift", "drag"], ["heat", "wing", "absent"], ["drag", "drag"]):
        np.testing.assert_allclose(index.scores(query), _lucene(query, docs, k1, b), rtol=1e-6)


def test_unknown_terms_score_zero_and_match_nothing() -> None:
    index = BM25Index.build([["a", "b"], ["c"]], BM25Params())
    scores = index.scores(["zzz"])
    assert scores.tolist() == [0.0, 0.0]
    assert index.matching_rows(scores).size == 0


def _oracle(corpus_tokens: list[list[str]], queries: list[list[str]], k1: float, b: float) -> None:
    ours = BM25Index.build(corpus_tokens, BM25Params(k1=k1, b=b))
    reference = bm25s.BM25(method="lucene", k1=k1, b=b)
    reference.index(corpus_tokens, show_progress=False)
    for query in queries:
        if not any(t in ours.vocab for t in query):
            continue
        # bm25s drops Lucene's constant (k1 + 1) factor, which changes no ranking.
        expected = reference.get_scores([t for t in query if t in ours.vocab]) * (k1 + 1)
        np.testing.assert_allclose(ours.scores(query), expected, atol=1e-5)


def test_matches_bm25s_on_the_fixture_corpus() -> None:
    analyzer = Analyzer("zh")
    corpus = [analyzer.tokens(f"{d.title}\n{d.text}") for d in fixture_documents()]
    queries = [
        analyzer.tokens(q) for q in ("Eiffel tower Paris", "机器学习 数据", "caffeine tea coffee")
    ]
    _oracle(corpus, queries, 1.2, 0.75)


@pytest.mark.quality
@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (1.5, 0.3)])
def test_matches_bm25s_on_cranfield(cranfield: Path, k1: float, b: float) -> None:
    analyzer = Analyzer("en")
    corpus = [
        analyzer.tokens(f"{d.title}\n{d.text}") for d in read_corpus(cranfield / "corpus.jsonl")
    ]
    queries = [analyzer.tokens(q) for q in read_queries(cranfield / "queries.jsonl").values()]
    _oracle(corpus, queries, k1, b)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    analyzer = Analyzer("en")
    corpus = [analyzer.tokens(d.text) for d in fixture_documents()]
    index = BM25Index.build(corpus, BM25Params(k1=1.1, b=0.6))
    index.save(tmp_path)
    loaded = BM25Index.load(tmp_path, index.params)
    query = analyzer.tokens("volcano lava magma")
    np.testing.assert_array_equal(loaded.scores(query), index.scores(query))
    assert loaded.vocab == index.vocab


@pytest.mark.parametrize(("k1", "b"), [(-0.1, 0.75), (1.2, 1.5), (float("nan"), 0.5)])
def test_nonsense_parameters_are_refused(k1: float, b: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        BM25Params(k1=k1, b=b)


def test_top_10_ids_equal_bm25s_on_a_zipfian_corpus() -> None:
    rng = np.random.default_rng(5)
    weights = 1.0 / np.arange(1, 2_001) ** 1.1
    weights /= weights.sum()
    corpus = [
        [f"t{t}" for t in rng.choice(2_000, size=int(rng.integers(5, 40)), p=weights)]
        for _ in range(3_000)
    ]
    ours = BM25Index.build(corpus, BM25Params())
    reference = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    reference.index(corpus, show_progress=False)
    for query in ([f"t{t}" for t in rng.choice(2_000, size=3, p=weights)] for _ in range(100)):
        scores = ours.scores(query)
        rows, best = top_k(scores, 10, ours.matching_rows(scores))
        theirs, their_scores = reference.retrieve([query], k=10, show_progress=False)
        np.testing.assert_allclose(best, their_scores[0][: len(best)] * 2.2, atol=1e-5)
        # Ids agree except where two documents tie exactly (each library orders ties its own way).
        for mine, other, score in zip(rows, theirs[0], best, strict=False):
            assert mine == other or np.isclose(scores[other], score, atol=1e-5)
