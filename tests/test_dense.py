"""Annoy candidates + exact re-scoring must find what exact search finds (recall@10 ≥ 0.95)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from realm.app.beir import read_corpus, read_queries
from realm.errors import StorageError
from realm.retriever.dense import AnnoyParams, DenseIndex
from realm.retriever.embedder import SentenceTransformerEncoder
from realm.retriever.topk import FloatArray


def _recall_at_10(index: DenseIndex, queries: FloatArray) -> float:
    found = 0
    for query in queries:
        approximate, _ = index.search(query, 10)
        exact, _ = index.exact(query, 10)
        found += len(set(approximate.tolist()) & set(exact.tolist()))
    return found / (10 * len(queries))


def _clustered(n: int, seed: int = 7, dim: int = 384) -> FloatArray:
    """Unit vectors around 300 topics, the shape sentence embeddings have, at an Annoy size."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(300, dim))
    vectors = centers[rng.integers(0, 300, n)] + rng.normal(scale=1.2, size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def test_default_parameters_reach_recall_095_on_20k_vectors() -> None:
    vectors = _clustered(20_200)
    index = DenseIndex.build(vectors[:20_000], AnnoyParams())
    assert index.annoy is not None  # large enough that Annoy, not brute force, answers
    assert _recall_at_10(index, vectors[20_000:]) >= 0.95


@pytest.mark.quality
def test_default_annoy_reaches_recall_095_on_real_embeddings(
    cranfield: Path, encoder: SentenceTransformerEncoder
) -> None:
    titles = [d.title for d in read_corpus(cranfield / "corpus.jsonl") if d.title]
    queries = list(read_queries(cranfield / "queries.jsonl").values())
    # Force the Annoy path (this corpus is small enough for brute force otherwise).
    params = replace(AnnoyParams(), exact_below=0)
    index = DenseIndex.build(encoder.encode(titles), params)
    assert _recall_at_10(index, encoder.encode(queries)) >= 0.95


def test_scores_are_exact_cosines() -> None:
    vectors = _clustered(5_000)
    index = DenseIndex.build(vectors, AnnoyParams(exact_below=0))
    rows, scores = index.search(vectors[17], 5)
    np.testing.assert_allclose(scores, vectors[rows] @ vectors[17], rtol=1e-6)
    assert rows[0] == 17


def test_filtered_search_returns_only_allowed_rows_in_exact_order() -> None:
    vectors = _clustered(6_000)
    index = DenseIndex.build(vectors, AnnoyParams())
    allowed = np.arange(0, 6_000, 7, dtype=np.int64)
    rows, _ = index.search(vectors[3], 10, allowed)
    assert set(rows.tolist()) <= set(allowed.tolist())
    expected, _ = index.exact(vectors[3], 10, allowed)
    assert rows.tolist() == expected.tolist()


@pytest.mark.parametrize("rows", [5_000, 300])
def test_save_and_load_answer_identically(tmp_path: Path, rows: int) -> None:
    vectors = _clustered(rows)
    index = DenseIndex.build(vectors, AnnoyParams())
    written = {p.name for p in index.save(tmp_path)}
    # With a forest the vectors are read back out of Annoy's own file: one copy, not two.
    assert written == (
        {"dense.ann"} if rows >= AnnoyParams().exact_below else {"dense_vectors.npy"}
    )
    loaded = DenseIndex.load(tmp_path, index.params, rows, vectors.shape[1])
    assert np.array_equal(loaded.vectors, vectors)
    assert not loaded.vectors.flags.writeable
    for query in vectors[:20]:
        assert loaded.search(query, 10)[0].tolist() == index.search(query, 10)[0].tolist()
        np.testing.assert_array_equal(loaded.search(query, 10)[1], index.search(query, 10)[1])


def test_a_truncated_annoy_file_is_refused(tmp_path: Path) -> None:
    vectors = _clustered(5_000)
    (path,) = DenseIndex.build(vectors, AnnoyParams()).save(tmp_path)
    path.write_bytes(path.read_bytes()[: 4_000 * 100])
    with pytest.raises(StorageError):
        DenseIndex.load(tmp_path, AnnoyParams(), 5_000, vectors.shape[1])


@pytest.mark.parametrize(
    ("rows", "search_k"), [(20_000, 10_000), (100_000, 10_000), (1_000_000, 20_000)]
)
def test_search_effort_grows_with_the_index(rows: int, search_k: int) -> None:
    """A fixed effort lost recall at 1M vectors (0.89); bench/dense_bench.py measures the rest."""
    index = DenseIndex(np.empty((rows, 1), dtype=np.float32), None, AnnoyParams())
    assert index.search_k(100) == search_k
