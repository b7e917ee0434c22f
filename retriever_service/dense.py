"""Dense passage search: Annoy for candidates, exact cosine for the final order.

Vectors are unit length, so Annoy's angular distance d relates to cosine by ``cos = 1 − d²/2``;
we still re-score candidates against the stored float32 vectors because Annoy's candidate order
is approximate, and a numpy gather of the candidates is two orders of magnitude faster than
reading them back one by one from Annoy (``get_item_vector``). Annoy item ids are the row numbers of
the generation (a dense id space we own), never document ids.

When a generation has an Annoy forest, the float32 vectors are not stored a second time: Annoy's
file holds item ``i`` as node ``i`` (``n_descendants``, two child ids, then the vector), so a
strided read-only memory map of that file *is* the vector matrix, exact to the bit. Both maps
share the page cache: one copy of the vectors in memory and on disk instead of two.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
from annoy import AnnoyIndex

from realm.errors import StorageError
from realm.retriever.topk import FloatArray, IntArray, top_k

VECTORS_FILE = "dense_vectors.npy"
ANNOY_FILE = "dense.ann"
FILES: tuple[str, ...] = (VECTORS_FILE, ANNOY_FILE)
METRIC: Final[Literal["angular"]] = "angular"
# An angular node: int32 n_descendants, int32 children[2], then float32 v[dimension].
_NODE_HEADER_BYTES = 12


MAX_TREES = 1024


@dataclass(frozen=True, slots=True)
class AnnoyParams:
    """Build and search effort. The defaults reach recall@10 ≥ 0.95 against exact search.

    ``candidates_per_k`` sets how many Annoy neighbours are re-scored per requested result;
    ``search_k_per_candidate`` sets how many tree nodes Annoy inspects per candidate up to
    ``effort_base_rows`` rows. A fixed effort finds a shrinking share of a growing
    neighbourhood (recall falls as the collection grows; figures in docs/benchmarks.md), so each
    tenfold growth past the base adds the base effort again: twice the effort at 1M rows.
    """

    n_trees: int = 32
    candidates_per_k: int = 10
    min_candidates: int = 100
    search_k_per_candidate: int = 100
    effort_base_rows: int = 100_000
    # Below this many rows, exact search is both faster and perfect; Annoy is skipped.
    exact_below: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.n_trees <= MAX_TREES:
            raise ValueError(
                f"annoy_trees={self.n_trees} is outside 1..{MAX_TREES}; recall stops growing "
                "long before (the default 32 reaches 0.95), while build time and size do not"
            )


class DenseIndex:
    """Unit vectors of one generation plus an Annoy forest over them (when large enough)."""

    def __init__(self, vectors: FloatArray, annoy: AnnoyIndex | None, params: AnnoyParams) -> None:
        self.vectors = vectors
        self.annoy = annoy
        self.params = params

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.vectors.shape[0])

    @classmethod
    def build(cls, vectors: FloatArray, params: AnnoyParams, seed: int = 42) -> "DenseIndex":
        """Builds the forest with a fixed seed, so a rebuild of the same vectors is identical."""
        annoy = None
        if vectors.shape[0] >= params.exact_below:
            annoy = AnnoyIndex(vectors.shape[1], METRIC)
            annoy.set_seed(seed)
            for row, vector in enumerate(vectors):
                annoy.add_item(row, vector)
            annoy.build(params.n_trees, n_jobs=-1)
        return cls(vectors, annoy, params)

    def search(
        self, query: FloatArray, k: int, allowed: IntArray | None = None
    ) -> tuple[IntArray, FloatArray]:
        """Top-``k`` rows by cosine, optionally only among ``allowed`` rows (a filter)."""
        if self.n_rows == 0 or k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if self.annoy is None or (allowed is not None and len(allowed) <= self.params.exact_below):
            return self.exact(query, k, allowed)
        wanted = max(k * self.params.candidates_per_k, self.params.min_candidates)
        if allowed is not None:
            # Oversample by the filter's selectivity so enough candidates survive it.
            wanted = min(self.n_rows, int(wanted * self.n_rows / max(len(allowed), 1)))
        rows = np.asarray(
            self.annoy.get_nns_by_vector(query, wanted, search_k=self.search_k(wanted)),
            dtype=np.int64,
        )
        if allowed is not None:
            rows = rows[np.isin(rows, allowed, assume_unique=True)]
            if len(rows) < k:
                return self.exact(query, k, allowed)
        return _rescore(self.vectors, query, rows, k)

    def search_k(self, candidates: int) -> int:
        """Tree nodes Annoy inspects to find ``candidates`` neighbours at this index's size."""
        growth = max(1.0, 1.0 + math.log10(self.n_rows / self.params.effort_base_rows))
        return int(candidates * self.params.search_k_per_candidate * growth)

    def exact(
        self, query: FloatArray, k: int, allowed: IntArray | None = None
    ) -> tuple[IntArray, FloatArray]:
        """Brute-force cosine (one BLAS matrix-vector product)."""
        if allowed is None:
            return top_k(self.vectors @ query, k)
        return _rescore(self.vectors, query, allowed, k)

    def save(self, directory: Path) -> list[Path]:
        """Writes the forest, or the vectors alone when there is none (small generations)."""
        if self.annoy is None:
            vectors_path = directory / VECTORS_FILE
            np.save(vectors_path, self.vectors, allow_pickle=False)
            return [vectors_path]
        annoy_path = directory / ANNOY_FILE
        self.annoy.save(str(annoy_path))
        if not np.array_equal(
            _vectors_in_annoy_file(annoy_path, *self.vectors.shape), self.vectors
        ):
            raise StorageError(
                f"{annoy_path}: Annoy's file layout is not the one this version reads vectors "
                "from; pin the annoy version in constraints.txt"
            )
        return [annoy_path]

    @classmethod
    def load(cls, directory: Path, params: AnnoyParams, rows: int, dimension: int) -> "DenseIndex":
        """Memory-maps the vectors and the Annoy file (no rebuild, no re-encoding).

        A generation's files never change, so mapping them read-only is safe: the rows queries
        touch become resident as page cache, which the kernel can reclaim under pressure and
        processes serving the same files share, instead of private memory held for good."""
        annoy_path = directory / ANNOY_FILE
        if not annoy_path.exists():
            vectors = np.load(directory / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
            return cls(vectors, None, params)
        annoy = AnnoyIndex(dimension, METRIC)
        try:
            annoy.load(str(annoy_path))
        except OSError as error:
            raise StorageError(f"{annoy_path} cannot be loaded ({error}); it is damaged") from error
        if annoy.get_n_items() != rows:
            raise StorageError(f"{annoy_path}: {annoy.get_n_items()} items, expected {rows}")
        return cls(_vectors_in_annoy_file(annoy_path, rows, dimension), annoy, params)


def _vectors_in_annoy_file(path: Path, rows: int, dimension: int) -> FloatArray:
    """Item vectors of an angular Annoy file as a read-only (rows, dimension) float32 view."""
    node_bytes = _NODE_HEADER_BYTES + 4 * dimension
    if rows and path.stat().st_size < rows * node_bytes:
        raise StorageError(f"{path} is shorter than its {rows} items; the file is damaged")
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    return np.ndarray(
        (rows, dimension),
        dtype=np.float32,
        buffer=mapped,
        offset=_NODE_HEADER_BYTES,
        strides=(node_bytes, 4),
    )


def _rescore(
    vectors: FloatArray, query: FloatArray, rows: IntArray, k: int
) -> tuple[IntArray, FloatArray]:
    best, scores = top_k(vectors[rows] @ query, k)
    return rows[best], scores
