"""Dense search: recall@10 against exact search and queries/s, against exact numpy and hnswlib.

Vectors are 384-d unit vectors clustered around topics (the shape MiniLM embeddings have); the
queries are held-out vectors of the same distribution. Single-threaded BLAS for every engine.
"""

import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import Row
from retriever_service.dense import AnnoyParams, DenseIndex
from retriever_service.topk import FloatArray


def clustered(n: int, dim: int = 384, topics: int = 1_000, seed: int = 11) -> FloatArray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(topics, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, topics, n)] + rng.normal(scale=1.2, size=(n, dim)).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _qps(
    search: Callable[[FloatArray], list[int]], queries: FloatArray
) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    found = [search(q) for q in queries]
    return len(queries) / (time.perf_counter() - started), found


def _recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def run_size(n: int, n_queries: int) -> list[Row]:
    data = clustered(n + n_queries)
    vectors, queries = data[:n], data[n:]
    rows: list[Row] = []
    with threadpool_limits(1):
        index = DenseIndex.build(vectors, AnnoyParams())
        exact_qps, truth = _qps(lambda q: top10(vectors @ q), queries)
        realm_qps, found = _qps(lambda q: index.search(q, 10)[0].tolist(), queries)
        recall = _recall(found, truth)
        rows.append(
            Row(
                f"dense queries/s, {n:,} vectors",
                realm_qps,
                "exact numpy matmul",
                exact_qps,
                "q/s",
                5.0 if n >= 1_000_000 else 1.0,
                note=f"ReaLM recall@10 vs exact = {recall:.3f} (bar 0.95)",
            )
        )
        try:
            import hnswlib
        except ImportError:
            return rows
        hnsw = hnswlib.Index(space="ip", dim=vectors.shape[1])
        hnsw.init_index(max_elements=n, ef_construction=200, M=16)
        hnsw.set_num_threads(1)
        hnsw.add_items(vectors)
        hnsw.set_ef(100)
        hnsw_qps, hnsw_found = _qps(lambda q: hnsw.knn_query(q, k=10)[0][0].tolist(), queries)
        rows.append(
            Row(
                f"dense queries/s, {n:,} vectors",
                realm_qps,
                "hnswlib (M=16, ef=100)",
                hnsw_qps,
                "q/s",
                1.0,
                note=f"hnswlib recall@10 = {_recall(hnsw_found, truth):.3f}",
            )
        )
    return rows


def top10(scores: FloatArray) -> list[int]:
    best = np.argpartition(-scores, 10)[:10]
    return [int(row) for row in best[np.argsort(-scores[best])]]


def run(quick: bool) -> list[Row]:
    sizes = [20_000] if quick else [100_000, 1_000_000]
    rows = []
    for n in sizes:
        rows += run_size(n, 200 if quick else 500)
    return rows
