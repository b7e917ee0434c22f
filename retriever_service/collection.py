"""One searchable collection: store, log, the served generation and the tail of writes since.

Writes are durable and searchable when acknowledged: each Upsert or Delete is applied to the
SQLite store and appended (fsynced) to the write-ahead log in one step, then mirrored into the
in-memory tail, which searches rank together with the generation. A background build folds the
tail into the next immutable generation and swaps ``manifest.json`` atomically; searches keep
the view they started with, so none fails during a swap. On start the newest undamaged
generation is loaded and the log replayed past it.
"""

import json
import logging
import shutil
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realm.errors import InvalidArgument, NotFound, StorageError, shown
from realm.files import fsync_dir, make_durable_dir, write_json_atomic
from realm.retriever import dense as dense_module
from realm.retriever import log_records
from realm.retriever.analyzer import Analyzer
from realm.retriever.chunker import ChunkSpan, chunk
from realm.retriever.embedder import Encoder
from realm.retriever.generation import (
    EMPTY_ENTRY,
    GENERATIONS,
    Generation,
    load_generation,
    write_generation,
)
from realm.retriever.live import View, carry_over, fold
from realm.retriever.published import PublishedState
from realm.retriever.search import Hit, Searcher, SearchQuery
from realm.retriever.settings import DEFAULT_COMPACT_THRESHOLD, CollectionSettings
from realm.retriever.store import DocumentStore, PassageRecord, StoreChange, StoredDocument
from realm.retriever.topk import FloatArray
from realm.retriever.wal import MAX_RECORD_BYTES, WriteAheadLog

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SETTINGS = "collection.json"
STORE = "store.sqlite"
WAL_DIR = "wal"
EncoderLoader = Callable[[str], Encoder]
# Tail passages plus tombstones that start a background generation build.


@dataclass(frozen=True, slots=True)
class UpsertResult:
    inserted: int
    replaced: int
    passages: int
    generation: int
    sequence: int


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int
    not_found: list[str]
    sequence: int


@dataclass(frozen=True, slots=True)
class CollectionStats:
    documents: int
    passages: int
    generation: int
    vocabulary: int
    index_bytes: int
    tail_passages: int
    tombstones: int
    wal_bytes: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A write's CPU work, done before taking the write lock."""

    documents: list[StoredDocument]
    spans: list[list[ChunkSpan]]
    term_counts: list[Counter[str]]
    vectors: FloatArray


class Collection:
    """A named collection on disk. Thread-safe: one writer at a time, any number of readers."""

    def __init__(
        self,
        name: str,
        directory: Path,
        settings: CollectionSettings,
        encoder: Encoder,
        compact_threshold: int = DEFAULT_COMPACT_THRESHOLD,
    ) -> None:
        self.name = name
        self.directory = directory
        self.settings = settings
        self.encoder = encoder
        self.compact_threshold = compact_threshold
        self.analyzer = Analyzer(settings.language)
        self.store = DocumentStore(directory / STORE)
        self.searcher = Searcher(settings, self.analyzer, encoder, self.store)
        self._write_lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._compact_wanted = threading.Event()
        self._closing = False
        # The manifest entry of the generation kept as fallback for the served one.
        self._fallback: Mapping[str, Any] = EMPTY_ENTRY
        self.wal = WriteAheadLog(directory / WAL_DIR)
        self._view = self._recover()
        # Worker processes answer searches themselves only while they hold this state.
        self.published = PublishedState.for_writer(directory)
        self._publish(self._view)
        self._compactor = threading.Thread(
            target=self._compact_in_background, name=f"compact-{name}", daemon=True
        )
        self._compactor.start()

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(
        cls,
        name: str,
        directory: Path,
        settings: CollectionSettings,
        load_encoder: EncoderLoader,
        compact_threshold: int = DEFAULT_COMPACT_THRESHOLD,
    ) -> "Collection":
        encoder = load_encoder(settings.embedding_model)  # fail before touching the disk
        # Made whole under a dot-name, then renamed into place: a crash leaves either nothing
        # under ``name`` or a complete collection, never a directory without its settings.
        make_durable_dir(directory.parent)
        staging = directory.with_name(f".creating-{name}-{uuid.uuid4().hex}")
        staging.mkdir()
        write_json_atomic(staging / SETTINGS, {"name": name, "settings": settings.to_json()})
        staging.rename(directory)
        fsync_dir(directory.parent)
        return cls(name, directory, settings, encoder, compact_threshold)

    @classmethod
    def open(
        cls,
        directory: Path,
        load_encoder: EncoderLoader,
        compact_threshold: int = DEFAULT_COMPACT_THRESHOLD,
    ) -> "Collection":
        name, settings = read_settings(directory)
        encoder = load_encoder(settings.embedding_model)
        return cls(name, directory, settings, encoder, compact_threshold)

    def close(self) -> None:
        """Stops the background builder (a build in progress finishes first) and the files."""
        self._closing = True
        self._compact_wanted.set()
        if self._compactor is not threading.current_thread():
            self._compactor.join()
        with self._write_lock:
            self.wal.close()
            self.store.close()
            self.published.close()

    @property
    def generation(self) -> int:
        return self._view.generation.number

    # ----------------------------------------------------------------- reads
    def snapshot(self) -> View:
        """The view served now; pass it to ``search`` to know which state answered."""
        return self._view

    def search(self, query: SearchQuery, view: View | None = None) -> list[Hit]:
        return self.searcher.search(view or self._view, query)  # one snapshot for the query

    def get(self, doc_id: str) -> tuple[StoredDocument, list[PassageRecord]]:
        found = self.store.document(self._view.sequence, doc_id)
        if found is None:
            raise NotFound(f"document id={shown(doc_id)} is not in collection {self.name!r}")
        return found

    def stats(self) -> CollectionStats:
        view = self._view
        with self._write_lock:
            wal_bytes = self.wal.size_bytes
        return CollectionStats(
            documents=view.documents,
            passages=view.passages,
            generation=view.generation.number,
            vocabulary=len(view.generation.bm25.vocab),
            index_bytes=view.generation.index_bytes,
            tail_passages=int(view.tail_alive().sum()),
            tombstones=view.dead_generation_count,
            wal_bytes=wal_bytes,
            last_sequence=view.sequence,
        )

    # ----------------------------------------------------------------- writes
    def _prepare(self, documents: Sequence[StoredDocument]) -> _Prepared:
        spans = [chunk(d.text, self.settings.chunker) for d in documents]
        texts = [
            _indexed_text(document, span)
            for document, doc_spans in zip(documents, spans, strict=True)
            for span in doc_spans
        ]
        counts = [Counter(self.analyzer.tokens(text)) for text in texts]
        vectors = (
            self.encoder.encode(texts)
            if texts
            else np.empty((0, self.encoder.dimension), dtype=np.float32)
        )
        return _Prepared(list(documents), spans, counts, vectors)

    def upsert(self, documents: Sequence[StoredDocument]) -> UpsertResult:
        """Adds or replaces documents; returns once they are durable and searchable."""
        latest = {d.doc_id: d for d in documents}  # an id sent twice: the last one wins
        prepared = self._prepare(list(latest.values()))  # chunk, analyse, encode: no lock held
        payload = log_records.encode_upsert(prepared.documents, prepared.vectors)
        if len(payload) > MAX_RECORD_BYTES:
            raise InvalidArgument(
                f"this Upsert stream makes a {len(payload):,}-byte log record, above "
                f"{MAX_RECORD_BYTES:,}; split it into several streams"
            )
        with self._write_lock:
            view, change = self._commit(
                lambda db, sequence: self.store.upsert(
                    db, sequence, prepared.documents, prepared.spans
                ),
                payload,
            )
            self._publish(self._mirror(view, change, prepared))
            result = UpsertResult(
                change.inserted,
                change.replaced,
                len(change.new_pids),
                self._view.generation.number,
                self._view.sequence,
            )
        self._maybe_compact()
        return result

    def delete(self, doc_ids: Sequence[str]) -> DeleteResult:
        """Removes documents (tombstones until the next build)."""
        with self._write_lock:
            view, change = self._commit(
                lambda db, sequence: self.store.delete(db, sequence, doc_ids),
                log_records.encode_delete(list(doc_ids)),
                skip_if=lambda change: not change.deleted_ids,
            )
            if change.deleted_ids:
                self._publish(self._mirror(view, change, None))
            sequence = self._view.sequence
        self._maybe_compact()
        deleted = set(change.deleted_ids)
        return DeleteResult(len(deleted), [d for d in doc_ids if d not in deleted], sequence)

    def _commit(
        self,
        apply: Callable[[sqlite3.Connection, int], StoreChange],
        payload: bytes,
        skip_if: Callable[[StoreChange], bool] = lambda change: False,
    ) -> tuple[View, StoreChange]:
        """Applies a write to the store and the log as one step (caller holds the write lock).

        The log record is fsynced inside the store transaction; if the commit then fails the
        record is cut off again, so a write that was not acknowledged is never replayed."""
        sequence = self._view.sequence + 1
        appended = False
        try:
            with self.store.transaction() as db:
                change = apply(db, sequence)
                if skip_if(change):
                    return self._view, change
                self.wal.append(sequence, payload)
                appended = True
        except (OSError, sqlite3.Error) as error:
            if appended:
                self.wal.undo_last(sequence, len(payload))
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise StorageError(
                f"collection {self.name!r}: could not write under {self.directory} ({reason}); "
                "nothing was changed: free space or fix permissions of the data directory, "
                "then retry"
            ) from error
        return self._view, change

    def _mirror(self, view: View, change: StoreChange, prepared: _Prepared | None) -> View:
        """Applies a committed write to the tail and publishes the next view."""
        tail = view.tail
        sequence = view.sequence + 1
        passages, total_length = view.passages, view.total_length
        killed = np.asarray(change.killed_pids, dtype=np.int64)
        if killed.size:
            generation = view.generation
            in_generation = killed <= (generation.pids[-1] if generation.n_rows else -1)
            generation_rows = generation.rows_of(killed[in_generation])
            tail_rows = [tail.row_of[int(pid)] for pid in killed[~in_generation]]
            total_length -= int(generation.bm25.doc_lengths[generation_rows].sum())
            total_length -= int(tail.lengths.head(tail.rows)[tail_rows].sum())
            tail.dead_at.data[tail_rows] = sequence
            tail.dead_generation_rows.extend(generation_rows)
            passages -= killed.size
        if prepared is not None and change.new_pids:
            metadata = [
                document.metadata
                for document, doc_spans in zip(prepared.documents, prepared.spans, strict=True)
                for _ in doc_spans
            ]
            tail.append(change.new_pids, prepared.vectors, prepared.term_counts, metadata)
            passages += len(change.new_pids)
            total_length += sum(sum(c.values()) for c in prepared.term_counts)
        documents = view.documents + change.inserted - len(change.deleted_ids)
        return View(
            view.generation,
            tail,
            sequence,
            tail.rows,
            tail.dead_generation_rows.size,
            passages,
            total_length,
            documents,
        )

    def _publish(self, view: View) -> None:
        """Serves ``view`` here and tells worker processes, before the write is acknowledged."""
        self._view = view
        self.published.publish(view.generation.number, view.sequence)

    # ----------------------------------------------------------------- generations
    def compact(self) -> int:
        """Folds the tail into a new generation now; returns the generation served after."""
        self._build_next()
        return self.generation

    def _maybe_compact(self) -> None:
        if self._view.changes >= self.compact_threshold:
            self._compact_wanted.set()

    def _compact_in_background(self) -> None:
        while True:
            self._compact_wanted.wait()
            self._compact_wanted.clear()
            if self._closing:
                return
            try:
                self._build_next()
            except Exception:
                _LOGGER.exception("collection %s: background build failed", self.name)

    def _build_next(self) -> None:
        with self._compact_lock:
            with self._write_lock:
                built_from = self._view
                if built_from.pristine:
                    return
                self.wal.seal()  # later records go to a segment the next build still needs
            number = built_from.generation.number + 1
            _LOGGER.info(
                "collection %s: building generation %d (%d tail passages, %d tombstones)",
                self.name,
                number,
                built_from.tail_rows,
                built_from.dead_generation_count,
            )
            try:
                folded = fold(built_from, self.settings.bm25)
                metadata = self.store.passage_metadata(built_from.sequence)
                generation = write_generation(
                    self.directory,
                    number,
                    built_from.sequence,
                    folded.pids,
                    folded.bm25,
                    folded.vectors,
                    [metadata.get(int(pid), {}) for pid in folded.pids],
                    self.settings,
                )
                with self._write_lock:
                    self._write_manifest(generation, built_from.generation)  # the commit point
                    self._publish(carry_over(built_from, self._view, generation))
            except (OSError, sqlite3.Error) as error:
                shutil.rmtree(self._generation_dir(number), ignore_errors=True)
                raise StorageError(
                    f"collection {self.name!r}: could not build generation {number} ({error}); "
                    "the served generation and the log are unchanged"
                ) from error
            self._fallback = built_from.generation.manifest_entry()
            _LOGGER.info(
                "collection %s serves generation %d (%d passages, log sequence %d)",
                self.name,
                number,
                generation.n_rows,
                built_from.sequence,
            )
            self._tidy(keep=(number, built_from.generation.number))

    def _write_manifest(self, newest: Generation, previous: Generation) -> None:
        write_json_atomic(
            self.directory / MANIFEST,
            {
                "format_version": FORMAT_VERSION,
                "model_id": self.settings.embedding_model,
                "dimension": self.encoder.dimension,
                "metric": dense_module.METRIC,
                "k1": self.settings.bm25.k1,
                "b": self.settings.bm25.b,
                "language": self.settings.language,
                # Newest first; the previous one is the fallback if the newest is damaged.
                "generations": [newest.manifest_entry(), previous.manifest_entry()],
            },
        )

    def _generation_dir(self, number: int) -> Path:
        return self.directory / GENERATIONS / f"{number:08d}"

    def _tidy(self, keep: tuple[int, int]) -> None:
        """Removes what neither kept generation needs: older directories, store rows and log
        segments that only generations before the fallback could replay."""
        fallback_sequence = int(self._fallback["last_sequence"])
        try:
            self.store.purge_dead(fallback_sequence)
            with self._write_lock:
                self.wal.remove_through(fallback_sequence)
            root = self.directory / GENERATIONS
            for child in root.iterdir() if root.exists() else []:
                if child.name.isdigit() and int(child.name) not in keep:
                    shutil.rmtree(child, ignore_errors=True)
        except (OSError, sqlite3.Error):
            # Committed already; leftovers are only disk space and are retried next build.
            _LOGGER.warning("collection %s: clean-up deferred", self.name, exc_info=True)

    # ----------------------------------------------------------------- start-up
    def _recover(self) -> View:
        """Loads the newest undamaged generation and replays the log past it."""
        entries = manifest_entries(self.directory, self.settings, self.encoder.dimension)
        generation: Generation | None = None
        for position, entry in enumerate(entries):
            try:
                metadata = self.store.passage_metadata(int(entry["last_sequence"]))
                generation = load_generation(
                    self.directory, entry, self.settings, self.encoder.dimension, metadata
                )
            except (StorageError, OSError, ValueError) as error:
                if position == len(entries) - 1:
                    raise
                _LOGGER.error(
                    "collection %s: generation %s is damaged (%s); falling back to generation "
                    "%s and replaying the log from there",
                    self.name,
                    entry["generation"],
                    error,
                    entries[position + 1]["generation"],
                )
                continue
            if position + 1 < len(entries):
                self._fallback = entries[position + 1]
            break
        assert generation is not None
        self.store.roll_back_after(generation.last_sequence)
        self.wal.resume_after(generation.last_sequence)
        view = View.of_generation(
            generation,
            self.encoder.dimension,
            self.store.count_documents(generation.last_sequence),
        )
        replayed = 0
        for sequence, payload in self.wal.replay(after=generation.last_sequence):
            view = self._replay(view, sequence, payload)
            replayed += 1
        _LOGGER.info(
            "collection %s: generation %d (%d passages) + %d log records replayed, sequence %d",
            self.name,
            generation.number,
            generation.n_rows,
            replayed,
            view.sequence,
        )
        return view

    def _replay(self, view: View, sequence: int, payload: bytes) -> View:
        record = log_records.decode(payload)
        with self.store.transaction() as db:
            if isinstance(record, log_records.DeleteRecord):
                change = self.store.delete(db, sequence, record.doc_ids)
                prepared = None
            else:
                spans = [chunk(d.text, self.settings.chunker) for d in record.documents]
                counts = [
                    Counter(self.analyzer.tokens(_indexed_text(document, span)))
                    for document, doc_spans in zip(record.documents, spans, strict=True)
                    for span in doc_spans
                ]
                if len(counts) != len(record.vectors):
                    raise StorageError(
                        f"{self.wal.directory}: record {sequence} has {len(record.vectors)} "
                        f"vectors for {len(counts)} passages; the chunker settings changed?"
                    )
                prepared = _Prepared(record.documents, spans, counts, record.vectors)
                change = self.store.upsert(db, sequence, record.documents, spans)
        return self._mirror(view, change, prepared)


def read_settings(directory: Path) -> tuple[str, CollectionSettings]:
    """The name and settings a collection directory was created with."""
    payload = json.loads((directory / SETTINGS).read_text(encoding="utf-8"))
    return payload["name"], CollectionSettings.from_json(payload["settings"])


def manifest_entries(
    directory: Path, settings: CollectionSettings, dimension: int
) -> list[Mapping[str, Any]]:
    """Generations to try, newest first; generation 0 (empty) when nothing was built."""
    path = directory / MANIFEST
    if not path.exists():
        return [EMPTY_ENTRY]
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StorageError(
            f"{path}: format_version={manifest.get('format_version')} is not "
            f"{FORMAT_VERSION}; this server cannot read it: re-ingest the collection"
        )
    if manifest.get("dimension") != dimension:
        raise StorageError(
            f"{path}: dimension={manifest.get('dimension')} but model "
            f"{settings.embedding_model} makes {dimension}-d vectors"
        )
    entries: list[Mapping[str, Any]] = manifest["generations"]
    return entries


def _indexed_text(document: StoredDocument, span: ChunkSpan) -> str:
    """What both indexes see for a passage: the title (when any), then the passage text."""
    text = document.text[span.start : span.end]
    return f"{document.title}\n{text}" if document.title else text
