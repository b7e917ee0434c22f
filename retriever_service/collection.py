"""One searchable collection: it orchestrates its store, log, live index and compactor.

Writes are durable and searchable when acknowledged: each Upsert or Delete is applied to the
SQLite store and appended (fsynced) to the write-ahead log in one step, then applied to the live
index (``View.apply``), which searches rank together with the generation. The ``Compactor``
folds the tail into the next immutable generation in the background and swaps the manifest
atomically; searches keep the view they started with, so none fails during a swap. On start the
newest undamaged generation is loaded and the log replayed past it.
"""

import hashlib
import json
import logging
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from realm import tracing
from realm.errors import InvalidArgument, NotFound, StorageError, shown
from realm.files import fsync_dir, make_durable_dir
from realm.retriever import log_records
from realm.retriever.analyzer import Analyzer
from realm.retriever.chunker import ChunkerConfig
from realm.retriever.compactor import Compactor, folded_generation
from realm.retriever.embedder import Encoder, EncoderSpec
from realm.retriever.generation import Generation, generation_dir, load_generation
from realm.retriever.live import Change, View
from realm.retriever.manifest import (
    EMPTY_ENTRY,
    STORE,
    WAL_DIR,
    GenerationEntry,
    read_entries,
    read_settings,
    write_manifest,
    write_settings,
)
from realm.retriever.passages import Analysed, analyse
from realm.retriever.published import PublishedState
from realm.retriever.reindex import (
    UNLOCKED_ATTEMPTS,
    ReencodedVectors,
    ReindexProgress,
)
from realm.retriever.search import Hit, Searcher, SearchQuery
from realm.retriever.settings import DEFAULT_COMPACT_THRESHOLD, CollectionSettings
from realm.retriever.store import DocumentStore, PassageRecord, StoreChange, StoredDocument
from realm.retriever.topk import FloatArray
from realm.retriever.wal import MAX_RECORD_BYTES, WriteAheadLog

_LOGGER = logging.getLogger(__name__)
EncoderLoader = Callable[[EncoderSpec], Encoder]
# Documents per slice of an upsert's pipeline: analysing one slice overlaps encoding the last.
PIPELINE_DOCUMENTS = 32


def collection_encoder(
    name: str, settings: CollectionSettings, load_encoder: EncoderLoader
) -> Encoder:
    """The encoder that made the collection's vectors. Another one (other weights, another
    export of them) is refused: its query vectors would be compared with stored vectors from
    a different space, and search would get worse without any error."""
    encoder = load_encoder(settings.encoder)
    recorded = settings.encoder_fingerprint
    if recorded and encoder.fingerprint != recorded:
        raise StorageError(
            f"collection {name!r} holds vectors made by {settings.embedding_model} on "
            f"{settings.embedding_backend} (encoder {recorded}), but this server's encoder is "
            f"{encoder.fingerprint}: the weights or their export differ (another model file, "
            "torch or onnxruntime version). Serve it with the versions that made it, or "
            "re-ingest its documents into a new collection"
        )
    return encoder


@dataclass(frozen=True, slots=True)
class UpsertResult:
    inserted: int
    replaced: int
    passages: int
    generation: int
    sequence: int
    # A sharded collection: the write's last log sequence in each shard (0: none), where
    # ``sequence`` is 0.
    shard_sequences: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int
    not_found: list[str]
    sequence: int
    shard_sequences: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    """An upsert's documents chunked, analysed and encoded: the costly part, done once by the
    process that accepted the write (in a cluster, other replicas take the vectors from the
    log)."""

    analysed: Analysed
    vectors: FloatArray

    def records(self, max_bytes: int) -> list[bytes]:
        """The write as log records of at most ``max_bytes`` each: one record unless it does not
        fit, then consecutive runs of whole documents; a single document too large for one
        record is refused, naming the limit."""
        documents, spans = self.analysed.documents, self.analysed.spans
        whole = log_records.encode_upsert(documents, self.vectors)
        if len(whole) <= max_bytes:
            return [whole]
        ends = np.cumsum([len(s) for s in spans])
        starts = ends - np.asarray([len(s) for s in spans])
        records: list[bytes] = []
        first = 0
        while first < len(documents):
            last = first + 1
            record = self._record(first, last, starts, ends)
            if len(record) > max_bytes:
                raise InvalidArgument(
                    f"document id={shown(documents[first].doc_id)} makes a {len(record):,}-byte "
                    f"log record, above the log's limit of {max_bytes:,} bytes (the NATS "
                    "server's max_payload); split the document or raise max_payload"
                )
            while last < len(documents):
                longer = self._record(first, last + 1, starts, ends)
                if len(longer) > max_bytes:
                    break
                record, last = longer, last + 1
            records.append(record)
            first = last
        return records

    def _record(self, first: int, last: int, starts: np.ndarray, ends: np.ndarray) -> bytes:
        rows = slice(int(starts[first]), int(ends[last - 1]))
        return log_records.encode_upsert(self.analysed.documents[first:last], self.vectors[rows])


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


def prepare(
    documents: Sequence[StoredDocument],
    chunker: ChunkerConfig,
    analyzer: Analyzer,
    encoder: Encoder,
) -> Prepared:
    """Chunks, analyses and encodes an upsert's documents: what ``Collection.prepare`` does, for
    a replica that writes to shards of a collection it holds none of."""
    # An id sent twice: the last one wins.
    latest = list({d.doc_id: d for d in documents}.values())
    with tracing.span("prepare", documents=len(latest)):
        # Slices are analysed here while the one before is encoded on another thread (the
        # encoders release the GIL). On 2 CPU cores this measured no gain (the encoder keeps
        # both busy; analysis is under a tenth of its time); it hides the analysis where
        # encoding leaves the CPU free, as on a GPU.
        slices = [
            latest[at : at + PIPELINE_DOCUMENTS] for at in range(0, len(latest), PIPELINE_DOCUMENTS)
        ]
        with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoding:
            parts = []
            for part in slices:
                analysed = analyse(part, chunker, analyzer)
                parts.append((analysed, encoding.submit(_vectors, encoder, analysed.texts)))
            vectors = [pending.result() for _, pending in parts]
    return Prepared(
        Analysed.joined([analysed for analysed, _ in parts]),
        np.concatenate([np.empty((0, encoder.dimension), np.float32), *vectors]),
    )


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
        self.analyzer = Analyzer(settings.language)
        self.store = DocumentStore(directory / STORE)
        self.searcher = Searcher(self.analyzer, self.store)
        self.write_lock = threading.Lock()
        self.wal = WriteAheadLog(directory / WAL_DIR)
        self._view, fallback = self._recover()
        self._sequence_reached = threading.Condition()
        self._digest: tuple[int, str] = (-1, "")
        # Worker processes answer searches themselves only while they hold this state.
        self.published = PublishedState.for_writer(directory)
        self.publish(self._view)
        self.compactor = Compactor(self, compact_threshold, fallback)
        self.compactor.start()

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
        encoder = collection_encoder(name, settings, load_encoder)  # before touching the disk
        if not settings.encoder_fingerprint:
            settings = replace(settings, encoder_fingerprint=encoder.fingerprint)
        # Made whole under a dot-name, then renamed into place: a crash leaves either nothing
        # under ``name`` or a complete collection, never a directory without its settings.
        make_durable_dir(directory.parent)
        staging = directory.with_name(f".creating-{name}-{uuid.uuid4().hex}")
        staging.mkdir()
        write_settings(staging, name, settings)
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
        encoder = collection_encoder(name, settings, load_encoder)
        return cls(name, directory, settings, encoder, compact_threshold)

    def close(self) -> None:
        """Stops the background builder (a build in progress finishes first) and the files."""
        self.compactor.close()
        with self.write_lock:
            self.wal.close()
            self.store.close()
            self.published.close()

    @property
    def generation(self) -> int:
        return self._view.generation.number

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    # ----------------------------------------------------------------- reads
    def snapshot(self) -> View:
        """The view served now; pass it to ``search`` to know which state answered."""
        return self._view

    def search(self, query: SearchQuery, view: View | None = None) -> list[Hit]:
        return self.searcher.search(view or self._view, query)  # one snapshot for the query

    def wait_for(self, sequence: int, timeout: float) -> bool:
        """Blocks until writes up to ``sequence`` are served here (in a cluster: applied from
        the log), at most ``timeout`` seconds; True when they are."""
        with self._sequence_reached:
            return self._sequence_reached.wait_for(lambda: self._view.sequence >= sequence, timeout)

    def state_digest(self) -> str:
        """SHA-256 over the served content: every live document (id, title, text, metadata)
        with its passages' offsets and vectors, and the BM25 statistics. Equal on replicas that
        applied the same writes, whatever their generations; cached per sequence."""
        view = self._view
        cached_sequence, cached = self._digest
        if cached_sequence == view.sequence:
            return cached
        digest = hashlib.sha256()
        digest.update(f"{view.documents} {view.passages} {view.total_length}\n".encode())
        generation = view.generation
        last_generation_pid = int(generation.pids[-1]) if generation.n_rows else -1
        for document, passages in self.store.live_documents(view.sequence):
            digest.update(
                json.dumps(
                    [
                        document.doc_id,
                        document.title,
                        document.text,
                        document.metadata,
                        [(start, end) for _, start, end in passages],
                    ],
                    ensure_ascii=False,
                    sort_keys=True,
                ).encode()
            )
            pids = np.asarray([pid for pid, _, _ in passages], dtype=np.int64)
            in_generation = pids <= last_generation_pid
            rows = np.empty(len(pids), dtype=np.int64)
            rows[in_generation] = generation.rows_of(pids[in_generation])
            rows[~in_generation] = [
                view.tail.row_of[int(pid)] + generation.n_rows for pid in pids[~in_generation]
            ]
            digest.update(np.ascontiguousarray(view.vectors(rows), dtype="<f4").tobytes())
        self._digest = (view.sequence, digest.hexdigest())
        return self._digest[1]

    def get(self, doc_id: str) -> tuple[StoredDocument, list[PassageRecord]]:
        found = self.store.document(self._view.sequence, doc_id)
        if found is None:
            raise NotFound(f"document id={shown(doc_id)} is not in collection {self.name!r}")
        return found

    def stats(self) -> CollectionStats:
        view = self._view
        with self.write_lock:
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
    def prepare(
        self, documents: Sequence[StoredDocument], encoder: Encoder | None = None
    ) -> Prepared:
        """Chunks, analyses and encodes an upsert's documents (no lock held: the slow part),
        with ``encoder`` (the collection's by default)."""
        return prepare(documents, self.settings.chunker, self.analyzer, encoder or self.encoder)

    def upsert(self, documents: Sequence[StoredDocument]) -> UpsertResult:
        """Adds or replaces documents; returns once they are durable and searchable."""
        encoder = self.encoder
        prepared = self.prepare(documents, encoder)
        payload = _upsert_payload(prepared)
        with tracing.span("commit", documents=len(documents)), self.write_lock:
            if self.encoder is not encoder:  # a reindex swapped models while this was encoded
                prepared = self.prepare(documents)
                payload = _upsert_payload(prepared)
            analysed, vectors = prepared.analysed, prepared.vectors
            view, change = self._commit(
                lambda db, sequence: self.store.upsert(
                    db, sequence, analysed.documents, analysed.spans
                ),
                payload,
            )
            self.publish(view.apply(_live_change(change, analysed, vectors)))
            result = UpsertResult(
                change.inserted,
                change.replaced,
                len(change.new_pids),
                self._view.generation.number,
                self._view.sequence,
            )
        self.compactor.after_write(self._view)
        return result

    def delete(self, doc_ids: Sequence[str]) -> DeleteResult:
        """Removes documents (tombstones until the next build)."""
        with self.write_lock:
            view, change = self._commit(
                lambda db, sequence: self.store.delete(db, sequence, doc_ids),
                log_records.encode_delete(list(doc_ids)),
                skip_if=lambda change: not change.deleted_ids,
            )
            if change.deleted_ids:
                self.publish(view.apply(_live_change(change)))
            sequence = self._view.sequence
        self.compactor.after_write(self._view)
        deleted = set(change.deleted_ids)
        return DeleteResult(len(deleted), [d for d in doc_ids if d not in deleted], sequence)

    def apply(self, sequence: int, payload: bytes) -> UpsertResult | DeleteResult | None:
        """Applies log record ``sequence`` that another process ordered (a cluster's stream):
        durable here and searchable on return. Every record takes its sequence, a delete that
        finds nothing too, so that replicas count alike. None when it was applied already."""
        record = log_records.decode(payload)
        with self.write_lock:
            if sequence <= self._view.sequence:
                return None
            if sequence != self._view.sequence + 1:
                raise SequenceGap(self.name, self._view.sequence, sequence)
            if isinstance(record, log_records.DeleteRecord):
                doc_ids = record.doc_ids
                view, change = self._commit(
                    lambda db, at: self.store.delete(db, at, doc_ids), payload
                )
                self.publish(view.apply(_live_change(change)))
                deleted = set(change.deleted_ids)
                result: UpsertResult | DeleteResult = DeleteResult(
                    len(deleted), [d for d in doc_ids if d not in deleted], sequence
                )
            else:
                analysed = self._analysed(record, sequence)
                view, change = self._commit(
                    lambda db, at: self.store.upsert(db, at, analysed.documents, analysed.spans),
                    payload,
                )
                self.publish(view.apply(_live_change(change, analysed, record.vectors)))
                result = UpsertResult(
                    change.inserted,
                    change.replaced,
                    len(change.new_pids),
                    self._view.generation.number,
                    sequence,
                )
        self.compactor.after_write(self._view)
        return result

    def _analysed(self, record: log_records.UpsertRecord, sequence: int) -> Analysed:
        analysed = analyse(record.documents, self.settings.chunker, self.analyzer)
        if len(analysed.texts) != len(record.vectors):
            raise StorageError(
                f"collection {self.name!r}: record {sequence} has {len(record.vectors)} "
                f"vectors for {len(analysed.texts)} passages; the chunker settings changed?"
            )
        return analysed

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

    def publish(self, view: View) -> None:
        """Serves ``view`` here and tells worker processes, before the write is acknowledged."""
        self._view = view
        self.published.publish(view.generation.number, view.sequence)
        with self._sequence_reached:
            self._sequence_reached.notify_all()

    # ----------------------------------------------------------------- generations
    def compact(self) -> int:
        """Folds the tail into a new generation now; returns the generation served after."""
        self.compactor.build()
        return self.generation

    def reindex(
        self, settings: CollectionSettings, encoder: Encoder, progress: ReindexProgress
    ) -> int:
        """Re-encodes every live passage with ``encoder`` (``settings`` name it) and swaps the
        collection over to it in one step; searches and writes continue meanwhile
        (``realm.retriever.reindex``). Returns the generation served after."""
        vectors = ReencodedVectors(encoder, self.store, progress)
        with self.compactor.exclusive():
            for _ in range(UNLOCKED_ATTEMPTS):
                view = self._view
                generation = self._reencoded(view, settings, vectors)
                with self.write_lock:
                    if self._view.sequence == view.sequence:
                        self._swap_model(view, generation, settings, encoder)
                        break
                # Writes came in while it was built: they are encoded and it is built again.
                _LOGGER.info(
                    "collection %s: writes arrived during the reindex's build; building again",
                    self.name,
                )
                shutil.rmtree(generation_dir(self.directory, generation.number), ignore_errors=True)
            else:
                with self.write_lock:
                    view = self._view
                    generation = self._reencoded(view, settings, vectors)
                    self._swap_model(view, generation, settings, encoder)
            self.compactor.fallback = generation.manifest_entry()
            self.compactor.tidy(keep=(generation.number,))
        _LOGGER.info(
            "collection %s now serves model %s (%s) from generation %d (%d passages)",
            self.name,
            settings.embedding_model,
            settings.embedding_backend,
            generation.number,
            generation.n_rows,
        )
        return generation.number

    def _reencoded(
        self, view: View, settings: CollectionSettings, vectors: ReencodedVectors
    ) -> Generation:
        """The generation after ``view``'s, with the new model's vectors."""
        vectors.encode_missing(view.live_pids().tolist())
        try:
            with tracing.span("reindex", collection=self.name):
                return folded_generation(self, view, settings, vectors.encoder, vectors.of)
        except (OSError, sqlite3.Error) as error:
            shutil.rmtree(
                generation_dir(self.directory, view.generation.number + 1), ignore_errors=True
            )
            raise StorageError(
                f"collection {self.name!r}: could not write the reindexed generation ({error}); "
                "it still serves its old model: free space under the data directory and retry"
            ) from error

    def _swap_model(
        self, view: View, generation: Generation, settings: CollectionSettings, encoder: Encoder
    ) -> None:
        """Serves ``generation`` and its model from now on (the caller holds the write lock)."""
        entry = generation.manifest_entry()
        try:
            # The commit point: no generation of the old model is left to fall back to, since
            # the log after it would hold old-model vectors.
            write_manifest(self.directory, settings, encoder.dimension, entry, entry)
        except OSError as error:
            shutil.rmtree(generation_dir(self.directory, generation.number), ignore_errors=True)
            raise StorageError(
                f"collection {self.name!r}: could not swap in the reindexed generation ({error}); "
                "it still serves its old model: free space under the data directory and retry"
            ) from error
        self.settings, self.encoder = settings, encoder
        self.publish(View.of_generation(generation, view.documents))
        try:
            write_settings(self.directory, self.name, settings)  # the manifest's word stands
            self.wal.seal()  # what follows is the new model's
            self.wal.remove_through(view.sequence)
        except OSError:
            _LOGGER.warning(
                "collection %s: clean-up after the reindex deferred", self.name, exc_info=True
            )

    # ----------------------------------------------------------------- start-up
    def _recover(self) -> tuple[View, GenerationEntry]:
        """Loads the newest undamaged generation and replays the log past it; returns the view
        and the manifest entry kept as fallback."""
        entries = read_entries(self.directory, self.settings, self.encoder.dimension)
        generation: Generation | None = None
        fallback = EMPTY_ENTRY
        for position, entry in enumerate(entries):
            try:
                metadata = self.store.passage_metadata(entry.last_sequence)
                generation = load_generation(
                    self.directory, entry, self.settings, self.encoder, metadata
                )
            except (StorageError, OSError, ValueError) as error:
                if position == len(entries) - 1:
                    raise
                _LOGGER.error(
                    "collection %s: generation %s is damaged (%s); falling back to generation "
                    "%s and replaying the log from there",
                    self.name,
                    entry.number,
                    error,
                    entries[position + 1].number,
                )
                continue
            if position + 1 < len(entries):
                fallback = entries[position + 1]
            break
        assert generation is not None
        self.store.roll_back_after(generation.last_sequence)
        self.wal.resume_after(generation.last_sequence)
        view = View.of_generation(generation, self.store.count_documents(generation.last_sequence))
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
        return view, fallback

    def _replay(self, view: View, sequence: int, payload: bytes) -> View:
        record = log_records.decode(payload)
        with self.store.transaction() as db:
            if isinstance(record, log_records.DeleteRecord):
                change = self.store.delete(db, sequence, record.doc_ids)
                return view.apply(_live_change(change))
            analysed = self._analysed(record, sequence)
            change = self.store.upsert(db, sequence, record.documents, analysed.spans)
        return view.apply(_live_change(change, analysed, record.vectors))


def _vectors(encoder: Encoder, texts: list[str]) -> FloatArray:
    if not texts:
        return np.empty((0, encoder.dimension), dtype=np.float32)
    return encoder.encode(texts)


def _upsert_payload(prepared: Prepared) -> bytes:
    """An Upsert stream's one log record; one above the log's record limit is refused."""
    payload = log_records.encode_upsert(prepared.analysed.documents, prepared.vectors)
    if len(payload) > MAX_RECORD_BYTES:
        raise InvalidArgument(
            f"this Upsert stream makes a {len(payload):,}-byte log record, above "
            f"{MAX_RECORD_BYTES:,}; split it into several streams"
        )
    return payload


class SequenceGap(StorageError):
    """The log skipped records this collection has not applied: only a snapshot can bridge it."""

    def __init__(self, name: str, applied: int, offered: int) -> None:
        super().__init__(
            f"collection {name!r} has applied the log up to {applied} but the log now starts at "
            f"{offered}: the records between were trimmed; restore this replica from a snapshot "
            "(or delete its data directory to rebuild it from the log)"
        )
        self.applied = applied
        self.offered = offered


def _live_change(
    change: StoreChange, analysed: Analysed | None = None, vectors: FloatArray | None = None
) -> Change:
    """A committed store change as the live index takes it; a delete comes without passages."""
    documents_added = change.inserted - len(change.deleted_ids)
    if analysed is None or vectors is None:
        empty = np.empty((0, 0), dtype=np.float32)
        return Change(change.killed_pids, [], empty, [], [], documents_added)
    return Change(
        change.killed_pids,
        change.new_pids,
        vectors,
        analysed.term_counts,
        analysed.metadata,
        documents_added,
    )
