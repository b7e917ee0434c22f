"""Vectorised top-k selection with a deterministic order.

Ties are broken by ascending row index so that the same index always returns the same ranking,
which is what lets tests compare top-k lists across implementations and restarts.
"""

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def top_k(
    scores: FloatArray, k: int, candidates: IntArray | None = None
) -> tuple[IntArray, FloatArray]:
    """Rows with the ``k`` highest scores, best first, among ``candidates`` (default: all rows).

    Returns ``(rows, scores)``. Uses ``argpartition`` (linear time) and sorts only the winners.
    """
    if candidates is not None:
        pool_scores = scores[candidates]
        rows, best = top_k(pool_scores, k)
        return candidates[rows], best
    n = scores.shape[0]
    if n == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    if k < n:
        # Take everything tied with the k-th score so the tie-break below sees all of them.
        kth = np.partition(scores, n - k)[n - k]
        winners = np.flatnonzero(scores >= kth)
    else:
        winners = np.arange(n)
    order = np.lexsort((winners, -scores[winners].astype(np.float64)))[:k]
    rows = winners[order].astype(np.int64)
    return rows, scores[rows]
