"""Immutable index generations: what one holds, how it is written durably and read back.

A generation is a snapshot of both indexes (BM25 arrays, vectors, Annoy file) at one log
sequence, plus the passage ids its rows stand for, in increasing pid order. It carries the
settings and the encoder its vectors were made with: a search encodes its query with the
generation's encoder, so a query and the vectors it is compared with are always from one
model, also while ``realm reindex`` swaps a collection to another one. Its files live in
``generations/<number>/`` and are never modified; the manifest lists each file's sha256 so a
damaged file is caught on load instead of serving wrong results.
"""

import logging
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt

from realm.errors import StorageError
from realm.files import fsync_dir, fsync_file, sha256_file
from realm.retriever.bm25 import BM25Index
from realm.retriever.dense import DenseIndex
from realm.retriever.embedder import Encoder
from realm.retriever.manifest import GenerationEntry
from realm.retriever.settings import CollectionSettings
from realm.retriever.topk import FloatArray, IntArray

_LOGGER = logging.getLogger(__name__)
PIDS_FILE = "pids.npy"
GENERATIONS = "generations"
Filters = dict[tuple[str, str], IntArray]


class Generation:
    """An immutable index snapshot. Row ``i`` of every array is passage ``pids[i]``."""

    def __init__(
        self,
        number: int,
        last_sequence: int,
        pids: npt.NDArray[np.int64],
        bm25: BM25Index,
        dense: DenseIndex,
        filters: Filters,
        files: dict[str, str],
        index_bytes: int,
        settings: CollectionSettings,
        encoder: Encoder,
    ) -> None:
        self.number = number
        self.last_sequence = last_sequence
        self.pids = pids
        self.bm25 = bm25
        self.dense = dense
        self.filters = filters
        self.files = files
        self.index_bytes = index_bytes
        self.settings = settings
        self.encoder = encoder

    @property
    def n_rows(self) -> int:
        return int(self.pids.size)

    def manifest_entry(self) -> GenerationEntry:
        return GenerationEntry(self.number, self.last_sequence, self.files)

    def allowed_rows(self, conditions: tuple[tuple[str, str], ...]) -> IntArray:
        """Rows whose metadata matches every condition."""
        empty = np.empty(0, dtype=np.int64)
        allowed = self.filters.get(conditions[0], empty)
        for condition in conditions[1:]:
            allowed = np.intersect1d(
                allowed, self.filters.get(condition, empty), assume_unique=True
            )
        return allowed

    def rows_of(self, pids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Rows of passages known to be in this generation (pids are sorted)."""
        rows = np.searchsorted(self.pids, pids)
        if rows.size and (rows.max() >= self.pids.size or (self.pids[rows] != pids).any()):
            raise KeyError(f"generation {self.number} lacks some of passages {pids.tolist()[:5]}")
        return rows.astype(np.int64)


def empty_generation(settings: CollectionSettings, encoder: Encoder) -> Generation:
    """Generation 0: nothing indexed, the state before the first build."""
    return Generation(
        0,
        0,
        np.empty(0, dtype=np.int64),
        BM25Index.build([], settings.bm25),
        DenseIndex(np.empty((0, encoder.dimension), dtype=np.float32), None, settings.annoy),
        {},
        {},
        0,
        settings,
        encoder,
    )


def filter_index(metadata: list[dict[str, str]]) -> Filters:
    buckets: dict[tuple[str, str], list[int]] = {}
    for row, entries in enumerate(metadata):
        for pair in entries.items():
            buckets.setdefault(pair, []).append(row)
    return {pair: np.asarray(rows, dtype=np.int64) for pair, rows in buckets.items()}


def generation_dir(collection_dir: Path, number: int) -> Path:
    return collection_dir / GENERATIONS / f"{number:08d}"


def write_generation(
    collection_dir: Path,
    number: int,
    last_sequence: int,
    pids: npt.NDArray[np.int64],
    bm25: BM25Index,
    vectors: FloatArray,
    metadata: list[dict[str, str]],
    settings: CollectionSettings,
    encoder: Encoder,
) -> Generation:
    """Builds the Annoy forest and writes every file of generation ``number`` durably."""
    dense = DenseIndex.build(vectors, settings.annoy)
    directory = generation_dir(collection_dir, number)
    if directory.exists():  # left by a build that crashed, or a damaged one set aside
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    pids_path = directory / PIDS_FILE
    np.save(pids_path, pids, allow_pickle=False)
    paths = [pids_path, *bm25.save(directory), *dense.save(directory)]
    for path in paths:
        fsync_file(path)
    fsync_dir(directory)
    fsync_dir(directory.parent)
    files = {str(p.relative_to(collection_dir)): sha256_file(p) for p in paths}
    size = sum(p.stat().st_size for p in paths)
    return Generation(
        number,
        last_sequence,
        pids,
        bm25,
        dense,
        filter_index(metadata),
        files,
        size,
        settings,
        encoder,
    )


def load_generation(
    collection_dir: Path,
    entry: GenerationEntry,
    settings: CollectionSettings,
    encoder: Encoder,
    metadata: dict[int, dict[str, str]],
) -> Generation:
    """Reads a generation after checking every file against the manifest's sha256."""
    number, files = entry.number, dict(entry.files)
    dimension = encoder.dimension
    if number == 0:
        return empty_generation(settings, encoder)
    for name, expected in files.items():
        path = collection_dir / name
        if not path.exists() or sha256_file(path) != expected:
            raise StorageError(
                f"{path} is missing or its sha256 does not match the manifest; restore the "
                "data directory from a backup or re-ingest the collection"
            )
    directory = generation_dir(collection_dir, number)
    pids = np.load(directory / PIDS_FILE, allow_pickle=False)
    bm25 = BM25Index.load(directory, settings.bm25)
    dense = DenseIndex.load(directory, settings.annoy, int(pids.size), dimension)
    if dense.dimension != dimension or bm25.n_docs != pids.size or dense.n_rows != pids.size:
        raise StorageError(f"{directory}: its arrays disagree in size; the files are damaged")
    filters = filter_index([metadata.get(int(p), {}) for p in pids])
    size = sum((collection_dir / name).stat().st_size for name in files)
    return Generation(
        number, entry.last_sequence, pids, bm25, dense, filters, files, size, settings, encoder
    )
