"""One searchable collection: store, analyzer, encoder and the generation being served.

A generation is an immutable snapshot of both indexes (BM25 arrays, vectors, Annoy file) plus the
passage ids its rows stand for. Writes build generation G+1 beside G and switch with one atomic
``manifest.json`` rename; searches hold a reference to the generation they started on, so they
never see a half-built index and never fail during a swap.
"""

import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from realm.errors import NotFound, StorageError
from realm.files import fsync_dir, fsync_file, sha256_file, write_json_atomic
from retriever_service import dense as dense_module
from retriever_service import fusion
from retriever_service.analyzer import Analyzer
from retriever_service.bm25 import BM25Index
from retriever_service.chunker import chunk
from retriever_service.dense import DenseIndex
from retriever_service.embedder import Encoder
from retriever_service.settings import CollectionSettings
from retriever_service.store import DocumentStore, PassageRecord, StoredDocument
from retriever_service.topk import FloatArray, IntArray, top_k

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SETTINGS = "collection.json"
STORE = "store.sqlite"
PIDS_FILE = "pids.npy"
SearchMode = Literal["bm25", "dense", "hybrid"]
EncoderLoader = Callable[[str], Encoder]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A validated search request in domain terms."""

    text: str
    k: int
    mode: SearchMode = "hybrid"
    filter: tuple[tuple[str, str], ...] = ()
    fusion_method: fusion.FusionMethod | None = None
    dense_weight: float | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    passage: PassageRecord
    score: float


@dataclass(frozen=True, slots=True)
class UpsertResult:
    inserted: int
    replaced: int
    passages: int
    generation: int


@dataclass(frozen=True, slots=True)
class CollectionStats:
    documents: int
    passages: int
    generation: int
    vocabulary: int
    index_bytes: int


class Generation:
    """An immutable index snapshot. Row ``i`` of every array is passage ``pids[i]``."""

    def __init__(
        self,
        number: int,
        pids: npt.NDArray[np.int64],
        bm25: BM25Index,
        dense: DenseIndex,
        filters: dict[tuple[str, str], IntArray],
        index_bytes: int,
    ) -> None:
        self.number = number
        self.pids = pids
        self.bm25 = bm25
        self.dense = dense
        self.filters = filters
        self.index_bytes = index_bytes

    def allowed_rows(self, conditions: tuple[tuple[str, str], ...]) -> IntArray | None:
        """Rows whose metadata matches every condition, or None when there is no filter."""
        if not conditions:
            return None
        empty = np.empty(0, dtype=np.int64)
        allowed = self.filters.get(conditions[0], empty)
        for condition in conditions[1:]:
            allowed = np.intersect1d(
                allowed, self.filters.get(condition, empty), assume_unique=True
            )
        return allowed


def _filter_index(metadata: Sequence[dict[str, str]]) -> dict[tuple[str, str], IntArray]:
    buckets: dict[tuple[str, str], list[int]] = {}
    for row, entries in enumerate(metadata):
        for pair in entries.items():
            buckets.setdefault(pair, []).append(row)
    return {pair: np.asarray(rows, dtype=np.int64) for pair, rows in buckets.items()}


class Collection:
    """A named collection on disk. Thread-safe: one writer at a time, any number of readers."""

    def __init__(
        self, name: str, directory: Path, settings: CollectionSettings, encoder: Encoder
    ) -> None:
        self.name = name
        self.directory = directory
        self.settings = settings
        self.encoder = encoder
        self.analyzer = Analyzer(settings.language)
        self.store = DocumentStore(directory / STORE)
        self._write_lock = threading.Lock()
        self._current = self._load_or_empty()

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(
        cls, name: str, directory: Path, settings: CollectionSettings, load_encoder: EncoderLoader
    ) -> "Collection":
        encoder = load_encoder(settings.embedding_model)  # fail before touching the disk
        directory.mkdir(parents=True)
        write_json_atomic(directory / SETTINGS, {"name": name, "settings": settings.to_json()})
        return cls(name, directory, settings, encoder)

    @classmethod
    def open(cls, directory: Path, load_encoder: EncoderLoader) -> "Collection":
        payload = json.loads((directory / SETTINGS).read_text(encoding="utf-8"))
        settings = CollectionSettings.from_json(payload["settings"])
        return cls(payload["name"], directory, settings, load_encoder(settings.embedding_model))

    def close(self) -> None:
        self.store.close()

    @property
    def generation(self) -> int:
        return self._current.number

    # ----------------------------------------------------------------- reads
    def snapshot(self) -> Generation:
        """The generation served now; pass it to ``search`` to know which one answered."""
        return self._current

    def search(self, query: SearchQuery, generation: Generation | None = None) -> list[Hit]:
        generation = generation or self._current  # one snapshot for the whole query
        if generation.pids.size == 0:
            return []
        allowed = generation.allowed_rows(query.filter)
        if allowed is not None and allowed.size == 0:
            return []
        rows, scores = self._rank(generation, query, allowed)
        records = self.store.passages([int(p) for p in generation.pids[rows]])
        return [
            Hit(records[int(pid)], float(score))
            for pid, score in zip(generation.pids[rows], scores, strict=True)
        ]

    def _rank(
        self, generation: Generation, query: SearchQuery, allowed: IntArray | None
    ) -> tuple[IntArray, FloatArray]:
        if query.mode == "bm25":
            return self._bm25_top(generation, query.text, query.k, allowed)[:2]
        vector = self.encoder.encode([query.text])[0]
        if query.mode == "dense":
            return generation.dense.search(vector, query.k, allowed)
        params = fusion.FusionParams()
        method = query.fusion_method or params.method
        weight = params.dense_weight if query.dense_weight is None else query.dense_weight
        depth = max(query.k, params.depth)
        bm25_rows, _, all_bm25 = self._bm25_top(generation, query.text, depth, allowed)
        dense_rows, _ = generation.dense.search(vector, depth, allowed)
        if method == "rrf":
            return fusion.rrf(bm25_rows, dense_rows, query.k, weight, params.rrf_k)
        candidates = np.union1d(bm25_rows, dense_rows)
        cosines = generation.dense.vectors[candidates] @ vector
        return fusion.weighted(candidates, all_bm25[candidates], cosines, query.k, weight)

    def _bm25_top(
        self, generation: Generation, text: str, k: int, allowed: IntArray | None
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        scores = generation.bm25.scores(self.analyzer.tokens(text))
        matching = generation.bm25.matching_rows(scores)
        if allowed is not None:
            matching = np.intersect1d(matching, allowed, assume_unique=True)
        rows, best = top_k(scores, k, matching)
        return rows, best, scores

    def get(self, doc_id: str) -> tuple[StoredDocument, list[PassageRecord]]:
        found = self.store.document(self.generation, doc_id)
        if found is None:
            raise NotFound(f"document id={doc_id!r} is not in collection {self.name!r}")
        return found

    def stats(self) -> CollectionStats:
        generation = self._current
        return CollectionStats(
            documents=self.store.count_documents(generation.number),
            passages=int(generation.pids.size),
            generation=generation.number,
            vocabulary=len(generation.bm25.vocab),
            index_bytes=generation.index_bytes,
        )

    # ----------------------------------------------------------------- writes
    def upsert(self, documents: Sequence[StoredDocument]) -> UpsertResult:
        """Adds or replaces documents; returns once the new generation is durable and served."""
        spans = [chunk(d.text, self.settings.chunker) for d in documents]
        with self._write_lock:
            target = self.generation + 1
            inserted, replaced = self._staged(
                lambda: self.store.stage_upsert(target, documents, spans), target
            )
            return UpsertResult(inserted, replaced, sum(len(s) for s in spans), target)

    def delete(self, doc_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Removes documents; returns ``(deleted, ids_not_found)``."""
        with self._write_lock:
            live = self.store.live_ids(self.generation, doc_ids)
            missing = [doc_id for doc_id in doc_ids if doc_id not in live]
            if live:
                target = self.generation + 1
                self._staged(lambda: self.store.stage_delete(target, sorted(live)), target)
            return len(live), missing

    def _staged(self, stage: Callable[[], T], target: int) -> T:
        """Runs ``stage`` then builds and publishes ``target``; undoes the stage on any failure."""
        previous = self.generation
        try:
            self.store.roll_back_after(previous)  # leftovers of a write whose undo failed
            result = stage()
            generation, manifest = self._build(target)
            write_json_atomic(self.directory / MANIFEST, manifest)  # the commit point
        except (OSError, sqlite3.Error) as error:
            self._roll_back_quietly(previous)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise StorageError(
                f"collection {self.name!r}: could not write generation {target} under "
                f"{self.directory} ({reason}); nothing was changed: free space or fix "
                "permissions of the data directory, then retry"
            ) from error
        except BaseException:
            self._roll_back_quietly(previous)
            raise
        self._serve(generation)
        return result

    def _roll_back_quietly(self, previous: int) -> None:
        """Undoes staged rows; if even that fails, the next write sweeps them before staging."""
        try:
            self.store.roll_back_after(previous)
        except sqlite3.Error:
            _LOGGER.warning(
                "collection %s: could not undo staged rows yet", self.name, exc_info=True
            )

    def _build(self, number: int) -> tuple[Generation, dict[str, Any]]:
        """Writes generation ``number``'s files durably; returns it with its manifest."""
        rows = self.store.index_rows(number)
        pids = np.fromiter((r.pid for r in rows), dtype=np.int64, count=len(rows))
        vectors = self._vectors_for(pids, [r.indexed_text for r in rows])
        bm25 = BM25Index.build(
            [self.analyzer.tokens(r.indexed_text) for r in rows], self.settings.bm25
        )
        dense = DenseIndex.build(vectors, self.settings.annoy)
        directory = self.directory / "generations" / f"{number:08d}"
        if directory.exists():  # left by a build that crashed before its manifest swap
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        pids_path = directory / PIDS_FILE
        np.save(pids_path, pids, allow_pickle=False)
        files = [pids_path, *bm25.save(directory), *dense.save(directory)]
        for path in files:
            fsync_file(path)
        fsync_dir(directory)
        manifest = {
            "format_version": FORMAT_VERSION,
            "generation": number,
            "model_id": self.settings.embedding_model,
            "dimension": self.encoder.dimension,
            "metric": dense_module.METRIC,
            "k1": self.settings.bm25.k1,
            "b": self.settings.bm25.b,
            "language": self.settings.language,
            "files": {str(p.relative_to(self.directory)): sha256_file(p) for p in files},
        }
        filters = _filter_index([r.metadata for r in rows])
        size = sum(p.stat().st_size for p in files)
        return Generation(number, pids, bm25, dense, filters, size), manifest

    def _vectors_for(self, pids: npt.NDArray[np.int64], texts: list[str]) -> FloatArray:
        """Reuses the served generation's vectors for surviving passages; encodes only new ones."""
        current = self._current
        vectors = np.empty((len(pids), self.encoder.dimension), dtype=np.float32)
        position = np.searchsorted(current.pids, pids)
        position = np.minimum(position, max(current.pids.size - 1, 0))
        known = np.zeros(len(pids), dtype=bool)
        if current.pids.size:
            known = current.pids[position] == pids
        if known.any():
            vectors[known] = current.dense.vectors[position[known]]
        fresh = np.flatnonzero(~known)
        if fresh.size:
            vectors[fresh] = self.encoder.encode([texts[i] for i in fresh])
        return vectors

    def _serve(self, generation: Generation) -> None:
        """Switches readers to a committed generation, then tidies up what nothing needs."""
        previous = self._current
        self._current = generation
        try:
            self.store.purge_dead(previous.number)
            self._remove_generations_before(previous.number)
        except (OSError, sqlite3.Error):
            # Committed already; leftovers are only disk space and are retried next write.
            _LOGGER.warning("collection %s: clean-up deferred", self.name, exc_info=True)
        _LOGGER.info(
            "collection %s serves generation %d (%d passages)",
            self.name,
            generation.number,
            generation.pids.size,
        )

    def _remove_generations_before(self, keep_from: int) -> None:
        """Keeps the served generation and the one before it; older ones are unreachable."""
        root = self.directory / "generations"
        for child in root.iterdir():
            if child.name.isdigit() and int(child.name) < keep_from:
                shutil.rmtree(child, ignore_errors=True)

    # ----------------------------------------------------------------- start-up
    def _load_or_empty(self) -> Generation:
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            self.store.roll_back_after(0)
            return self._empty()
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        self._check_manifest(manifest)
        number = int(manifest["generation"])
        self.store.roll_back_after(number)  # forget a build that died before its swap
        directory = self.directory / "generations" / f"{number:08d}"
        pids = np.load(directory / PIDS_FILE, allow_pickle=False)
        bm25 = BM25Index.load(directory, self.settings.bm25)
        dense = DenseIndex.load(directory, self.settings.annoy)
        metadata = self.store.passage_metadata(number)
        filters = _filter_index([metadata.get(int(p), {}) for p in pids])
        size = sum((self.directory / name).stat().st_size for name in manifest["files"])
        _LOGGER.info(
            "collection %s loaded generation %d (%d passages)", self.name, number, pids.size
        )
        return Generation(number, pids, bm25, dense, filters, size)

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StorageError(
                f"{self.directory / MANIFEST}: format_version={manifest.get('format_version')} is "
                f"not {FORMAT_VERSION}; this server cannot read it"
            )
        if manifest.get("dimension") != self.encoder.dimension:
            raise StorageError(
                f"{self.directory / MANIFEST}: dimension={manifest.get('dimension')} but model "
                f"{self.settings.embedding_model} makes {self.encoder.dimension}-d vectors"
            )
        for name, expected in manifest["files"].items():
            path = self.directory / name
            if not path.exists() or sha256_file(path) != expected:
                raise StorageError(
                    f"{path} is missing or its sha256 does not match the manifest; restore the "
                    "data directory from a backup or re-ingest the collection"
                )

    def _empty(self) -> Generation:
        empty_vectors = np.empty((0, self.encoder.dimension), dtype=np.float32)
        return Generation(
            0,
            np.empty(0, dtype=np.int64),
            BM25Index.build([], self.settings.bm25),
            DenseIndex(empty_vectors, None, self.settings.annoy),
            {},
            0,
        )
