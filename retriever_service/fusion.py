"""Fusing the BM25 and dense rankings of one query.

Two methods, chosen per request:

* ``rrf`` — reciprocal rank fusion, ``Σ w / (k + rank)``; robust but blind to score gaps, so it
  drags a strong ranking down towards a weak one.
* ``weighted`` — a convex combination of per-query normalised scores. Every candidate gets its
  *exact* score from both sides (not an imputed zero), BM25 is divided by the query's best BM25
  score and cosine is min-max normalised over the candidates. See docs/quality.md for why the
  default weights the dense side the way it does.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np

from realm.retriever.topk import FloatArray, IntArray, top_k

FusionMethod = Literal["rrf", "weighted"]


@dataclass(frozen=True, slots=True)
class FusionParams:
    """Defaults for hybrid search, overridable per request (``dense_weight``, ``method``)."""

    method: FusionMethod = "weighted"
    dense_weight: float = 0.7
    rrf_k: int = 60
    # Candidates taken from each side before fusing: max(k, this).
    depth: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ValueError(f"dense_weight={self.dense_weight} must be in [0, 1]")
        if self.rrf_k < 1:
            raise ValueError(f"rrf_k={self.rrf_k} must be >= 1")


def rrf(
    bm25_rows: IntArray, dense_rows: IntArray, k: int, dense_weight: float, rrf_k: int
) -> tuple[IntArray, FloatArray]:
    """Reciprocal rank fusion of two best-first row lists; weights are ``1 − w`` and ``w``."""
    candidates = np.union1d(bm25_rows, dense_rows)
    fused = np.zeros(len(candidates), dtype=np.float64)
    for rows, weight in ((bm25_rows, 1.0 - dense_weight), (dense_rows, dense_weight)):
        positions = np.searchsorted(candidates, rows)
        fused[positions] += weight / (rrf_k + np.arange(1, len(rows) + 1))
    best, scores = top_k(fused.astype(np.float32), k)
    return candidates[best], scores


def weighted(
    candidates: IntArray, bm25_scores: FloatArray, cosines: FloatArray, k: int, dense_weight: float
) -> tuple[IntArray, FloatArray]:
    """Convex combination of normalised exact scores of ``candidates`` (aligned arrays)."""
    if len(candidates) == 0:
        return candidates, np.empty(0, dtype=np.float32)
    best_bm25 = float(bm25_scores.max())
    bm25_part = bm25_scores / best_bm25 if best_bm25 > 0 else np.zeros_like(bm25_scores)
    low, high = float(cosines.min()), float(cosines.max())
    dense_part = (cosines - low) / (high - low) if high > low else np.ones_like(cosines)
    fused = (1.0 - dense_weight) * bm25_part + dense_weight * dense_part
    best, scores = top_k(fused.astype(np.float32), k)
    return candidates[best], scores
