"""Dense search: recall@10 against exact search and queries/s, against exact numpy and hnswlib.

Vectors are synthetic 384-d unit vectors: 1,000 topic centres plus noise, a stand-in for sentence
embeddings (whose neighbours also share a topic) at sizes no CPU could encode in a benchmark; the
queries are held-out vectors of the same distribution. Recall on real MiniLM embeddings is
checked by tests/test_dense.py on Cranfield. Indexes are built with every core; queries run one at
a time with single-threaded BLAS for every engine.
"""

from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import Row, median_seconds
from realm.retriever.dense import AnnoyParams, DenseIndex
from realm.retriever.topk import FloatArray

WARMUP_QUERIES = 20
EXACT_TIMED_QUERIES = 100


def clustered(n: int, dim: int = 384, topics: int = 1_000, seed: int = 11) -> FloatArray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(topics, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, topics, n)] + rng.normal(scale=1.2, size=(n, dim)).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _qps(search: Callable[[FloatArray], list[int]], queries: FloatArray, repeats: int = 3) -> float:
    """Median queries/s over ``repeats`` passes, after a warm-up pass over a few queries."""
    for query in queries[:WARMUP_QUERIES]:
        search(query)
    return len(queries) / median_seconds(lambda: [search(q) for q in queries], repeats, warmup=0)


def _recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def run_size(n: int, n_queries: int) -> list[Row]:
    data = clustered(n + n_queries)
    vectors, queries = data[:n], data[n:]
    name = f"{n:,} vectors"
    rows: list[Row] = []
    index = DenseIndex.build(vectors, AnnoyParams())  # all cores: a build is not the measure
    with threadpool_limits(1):
        truth = [top10(vectors @ q) for q in queries]
        found = [index.search(q, 10)[0].tolist() for q in queries]
        # Exact search costs the same for every query: a few of them time it as well as all.
        exact_qps = _qps(lambda q: top10(vectors @ q), queries[:EXACT_TIMED_QUERIES])
        realm_qps = _qps(lambda q: index.search(q, 10)[0].tolist(), queries)
    rows.append(
        Row(
            f"dense queries/s, {name}",
            realm_qps,
            "exact numpy matmul",
            exact_qps,
            "q/s",
            5.0 if n >= 1_000_000 else None,  # the bar is set at 1M vectors
        )
    )
    rows.append(
        Row(
            f"dense recall@10, {name}",
            _recall(found, truth),
            "exact numpy matmul",
            1.0,
            "",
            0.95,
            note=f"over {n_queries} held-out queries",
        )
    )
    try:
        import hnswlib
    except ImportError:
        return rows
    hnsw = hnswlib.Index(space="ip", dim=vectors.shape[1])
    hnsw.init_index(max_elements=n, ef_construction=200, M=16)
    hnsw.add_items(vectors)  # all cores, as the Annoy build
    hnsw.set_num_threads(1)
    hnsw.set_ef(100)
    with threadpool_limits(1):
        hnsw_found = [hnsw.knn_query(q, k=10)[0][0].tolist() for q in queries]
        hnsw_qps = _qps(lambda q: hnsw.knn_query(q, k=10)[0][0].tolist(), queries)
    rows.append(
        Row(
            f"dense queries/s, {name}",
            realm_qps,
            "hnswlib (M=16, ef=100)",
            hnsw_qps,
            "q/s",
            None,
            note=f"hnswlib recall@10 = {_recall(hnsw_found, truth):.3f}",
        )
    )
    return rows


def top10(scores: FloatArray) -> list[int]:
    best = np.argpartition(-scores, 10)[:10]
    return [int(row) for row in best[np.argsort(-scores[best])]]


def run(quick: bool) -> list[Row]:
    sizes = [10_000] if quick else [100_000, 1_000_000]
    rows = []
    for n in sizes:
        rows += run_size(n, 200 if quick else 300)
    return rows
