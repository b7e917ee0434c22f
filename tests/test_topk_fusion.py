import numpy as np

from realm.retriever.fusion import rrf, weighted
from realm.retriever.topk import top_k


def test_top_k_orders_by_score_then_row() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9], dtype=np.float32)
    rows, best = top_k(scores, 3)
    assert rows.tolist() == [1, 4, 0]
    assert best.tolist() == [np.float32(0.9), np.float32(0.9), np.float32(0.5)]


def test_top_k_among_candidates_and_with_k_above_size() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    rows, _ = top_k(scores, 10, np.array([0, 2], dtype=np.int64))
    assert rows.tolist() == [2, 0]


def test_rrf_sums_reciprocal_ranks() -> None:
    bm25_rows = np.array([7, 3, 5])
    dense_rows = np.array([3, 9])
    rows, scores = rrf(bm25_rows, dense_rows, 4, dense_weight=0.5, rrf_k=60)
    # 3 is 2nd and 1st: 0.5/62 + 0.5/61 beats 7 (0.5/61 alone).
    assert rows.tolist() == [3, 7, 9, 5]
    assert np.isclose(scores[0], 0.5 / 62 + 0.5 / 61)


def test_weighted_uses_normalised_scores_of_both_sides() -> None:
    candidates = np.array([10, 11, 12])
    bm25 = np.array([8.0, 0.0, 4.0], dtype=np.float32)
    cosine = np.array([0.2, 0.8, 0.5], dtype=np.float32)
    rows, scores = weighted(candidates, bm25, cosine, 3, dense_weight=0.5)
    # normalised: bm25 [1, 0, .5], cosine [0, 1, .5] -> fused [.5, .5, .5]; ties by position.
    assert rows.tolist() == [10, 11, 12]
    rows, _ = weighted(candidates, bm25, cosine, 1, dense_weight=0.9)
    assert rows.tolist() == [11]
    rows, _ = weighted(candidates, bm25, cosine, 1, dense_weight=0.1)
    assert rows.tolist() == [10]
    assert np.allclose(scores, 0.5)
