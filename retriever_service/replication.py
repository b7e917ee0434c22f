"""Cluster mode: this replica's collections kept equal to the cluster's log.

Any replica accepts a write: it validates, chunks and encodes once, publishes the record (with
its vectors) to the collection's JetStream stream, and answers once JetStream has stored it *and*
this replica has applied it, so the writer reads its own write here at once. Every replica — the
one that took the write too — applies each stream strictly in stream order through
``Collection.apply``, into its own store, write-ahead log, tail and generations, so all replicas
hold the same documents, passages, vectors and BM25 statistics (``Collection.state_digest``).

The catalog (which collections exist, with which settings and stream) is followed the same way:
a collection made or deleted through any replica appears or goes on every replica.
"""

import asyncio
import contextlib
import json
import logging
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from realm import tracing
from realm.errors import FailedPrecondition, NotFound, StorageError, Unavailable
from realm.files import write_json_atomic
from realm.logs import request_id
from realm.retriever import snapshots
from realm.retriever.collection import Collection, DeleteResult, SequenceGap, UpsertResult
from realm.retriever.jetstream import NATS_FAILURES, CatalogEntry, JetStreamLog, bounded
from realm.retriever.log_records import encode_delete
from realm.retriever.registry import Registry
from realm.retriever.settings import ClusterOptions, CollectionSettings
from realm.retriever.store import StoredDocument

_LOGGER = logging.getLogger(__name__)
# Names the log a local collection was built from; a collection without it is rebuilt.
BINDING_FILE = "log.json"
REPLICA_ID_FILE = "replica-id"
# Records fetched from a stream at once, and how long a fetch waits for new ones.
FETCH_BATCH = 256
FETCH_WAIT_S = 1.0
# Results of recent writes kept for the replica that accepted them to report.
KEPT_RESULTS = 4096
# How long a create or delete waits to be applied here after the catalog took it.
CATALOG_APPLY_S = 60.0


def replica_id(data_dir: Path) -> str:
    """This replica's stable name (its durable consumers are named after it): made once per data
    directory, since the directory is what the replica's position in each log belongs to."""
    path = data_dir / REPLICA_ID_FILE
    if not path.exists():
        write_json_atomic(path, {"id": uuid.uuid4().hex[:12]})
    return str(json.loads(path.read_text())["id"])


def _bound_stream(collection: Collection) -> str | None:
    path = collection.directory / BINDING_FILE
    return str(json.loads(path.read_text())["stream"]) if path.exists() else None


@dataclass
class Feed:
    """One collection's log, applied here in order by a background task."""

    entry: CatalogEntry
    collection: Collection
    consumer: str
    # The newest sequence this replica knows the log holds (for lag).
    log_sequence: int = 0
    results: OrderedDict[int, UpsertResult | DeleteResult] = field(default_factory=OrderedDict)
    failure: str = ""
    task: asyncio.Task[None] | None = None
    # The newest generation this replica offered as the collection's snapshot.
    offered_generation: int = 0
    snapshotting: asyncio.Task[None] | None = None

    @property
    def lag(self) -> int:
        return max(0, self.log_sequence - self.collection.snapshot().sequence)

    def keep(self, sequence: int, result: UpsertResult | DeleteResult | None) -> None:
        """Remembers a write's result for the replica that accepted it to report."""
        if result is not None:
            self.results[sequence] = result
            while len(self.results) > KEPT_RESULTS:
                self.results.popitem(last=False)

    async def stop(self) -> None:
        for task in (self.task, self.snapshotting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


class Replication:
    """Follows the catalog and every collection's log; carries out writes through the log."""

    def __init__(self, registry: Registry, options: ClusterOptions, replica: str) -> None:
        self._log: JetStreamLog | None = None
        self.registry = registry
        self.options = options
        self.consumer = f"replica-{replica}"
        self.feeds: dict[str, Feed] = {}
        self._catalog_applied = asyncio.Condition()
        self._watching: asyncio.Task[None] | None = None

    @property
    def log(self) -> JetStreamLog:
        if self._log is None:
            raise Unavailable("this replica is starting: not yet connected to NATS; retry")
        return self._log

    # ------------------------------------------------------------------ start and stop
    async def start(self) -> None:
        """Connects to NATS, brings the local collections in line with the catalog, starts
        following it and every log, and returns once each collection is within
        ``max_start_lag`` of its log (or has failed: that one collection then refuses writes
        naming why, and the others are served)."""
        self._log = await JetStreamLog.connect(self.options)
        watcher = await self.log.watch_catalog()
        current: dict[str, CatalogEntry] = {}
        # nats-py leaves updates() untyped; it returns an entry, or None after the last one.
        while (update := await watcher.updates(timeout=30.0)) is not None:  # type: ignore[no-untyped-call]
            if update.operation not in (KV_DEL, KV_PURGE) and update.value:
                current[update.key] = CatalogEntry.from_bytes(update.key, update.value)
            else:
                current.pop(update.key, None)
        for collection in self.registry.list():
            if collection.name in current:
                continue
            # nats-py's watcher can end its first pass early (nats-io/nats.py#995: a stale
            # pending count), so a local collection it did not list is read from the catalog
            # before it is dropped: dropping a live one would make it restore from a snapshot
            # while it serves.
            try:
                current[collection.name], _ = await self.log.entry(collection.name)
            except NotFound:
                _LOGGER.info("collection %s was deleted from the cluster: dropped", collection.name)
                await asyncio.to_thread(self.registry.delete, collection.name)
        for entry in current.values():
            await self._serve(entry)
        self._watching = asyncio.create_task(self._follow_catalog(watcher))
        for feed in list(self.feeds.values()):
            last = await self.log.last_sequence(feed.entry)
            feed.log_sequence = max(feed.log_sequence, last)
            wanted = last - self.options.max_start_lag
            while feed.collection.snapshot().sequence < wanted and not feed.failure:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        for feed in self.feeds.values():
            await feed.stop()
        if self._log is not None:
            await self._log.close()

    async def _follow_catalog(self, watcher: KeyValue.KeyWatcher) -> None:
        async for update in watcher:
            if update is None:
                continue
            try:
                if update.operation in (KV_DEL, KV_PURGE) or not update.value:
                    await self._drop(update.key)
                else:
                    await self._serve(CatalogEntry.from_bytes(update.key, update.value))
            except Exception:  # one bad entry must not stop the replica following the rest
                _LOGGER.exception("collection %s: applying a catalog change failed", update.key)
            async with self._catalog_applied:
                self._catalog_applied.notify_all()

    async def _serve(self, entry: CatalogEntry) -> None:
        """Serves ``entry`` here: the local copy when it was built from the same log, else a
        new empty one that the log then fills."""
        feed = self.feeds.get(entry.name)
        if feed is not None and feed.entry.stream == entry.stream:
            return
        try:
            local: Collection | None = self.registry.get(entry.name)
        except NotFound:
            local = None
        if local is not None and _bound_stream(local) != entry.stream:
            await self._drop(entry.name)
            local = None
        if local is None:
            local = await asyncio.to_thread(self.registry.create, entry.name, entry.settings)
            write_json_atomic(local.directory / BINDING_FILE, {"stream": entry.stream})
        feed = Feed(entry, local, self.consumer)
        feed.task = asyncio.create_task(self._follow(feed), name=f"log-{entry.name}")
        self.feeds[entry.name] = feed

    # ------------------------------------------------------------------ following a log
    async def _follow(self, feed: Feed) -> None:
        """Applies the collection's log from where this replica's files stop, for as long as it
        serves the collection: reconnects after NATS failures, restores the snapshot when the
        records it needs were trimmed, offers a snapshot of each generation it seals."""
        while True:
            try:
                applied = feed.collection.snapshot().sequence
                first, _ = await self.log.bounds(feed.entry)
                if first > applied + 1:  # trimmed past us, maybe to nothing: no record says so
                    raise SequenceGap(feed.entry.name, applied, first)
                subscription = await self.log.subscribe(feed.entry, feed.consumer, applied + 1)
                try:
                    await self._apply(feed, subscription)
                finally:
                    with contextlib.suppress(*NATS_FAILURES):
                        await subscription.unsubscribe()
            except SequenceGap as gap:
                try:
                    await self._restore(feed, gap)
                except (StorageError, *NATS_FAILURES, Unavailable) as error:
                    feed.failure = f"{gap} ({error})"
                    _LOGGER.error("collection %s: %s", feed.entry.name, feed.failure)
                    return
            except (*NATS_FAILURES, Unavailable) as error:
                _LOGGER.warning(
                    "collection %s: following its log failed (%s: %s); retrying",
                    feed.entry.name,
                    type(error).__name__,
                    error,
                )
                await asyncio.sleep(1.0)

    async def _apply(self, feed: Feed, subscription: object) -> None:
        fetch = subscription.fetch  # type: ignore[attr-defined]
        while True:
            try:
                messages = await fetch(batch=FETCH_BATCH, timeout=FETCH_WAIT_S)
            except TimeoutError:  # nats-py raises its own or asyncio's: no new records
                feed.log_sequence = max(feed.log_sequence, feed.collection.snapshot().sequence)
                messages = []
            for message in messages:
                metadata = message.metadata
                sequence = int(metadata.sequence.stream)
                result = await asyncio.to_thread(feed.collection.apply, sequence, message.data)
                feed.keep(sequence, result)
                feed.log_sequence = max(feed.log_sequence, sequence + int(metadata.num_pending))
                await message.ack()
            self._offer_snapshot(feed)

    def _offer_snapshot(self, feed: Feed) -> None:
        """Starts storing a snapshot of a generation this replica sealed since the last one."""
        generation = feed.collection.generation
        idle = feed.snapshotting is None or feed.snapshotting.done()
        if generation > feed.offered_generation and idle:
            feed.offered_generation = generation
            feed.snapshotting = asyncio.create_task(self._store_snapshot(feed))

    async def _store_snapshot(self, feed: Feed) -> None:
        """Uploads the served generation unless a snapshot as new is stored already, then trims
        the log below what the snapshot and every replica cover. Failures are logged: the next
        sealed generation tries again, and the log keeps its records meanwhile."""
        try:
            stored = await self.log.snapshot_info(feed.entry)
            with tempfile.TemporaryDirectory(dir=self.registry.root.parent) as scratch:
                archive = Path(scratch) / "snapshot.tar"
                info = await asyncio.to_thread(snapshots.pack, feed.collection, archive)
                if info is None or (stored is not None and stored.sequence >= info.sequence):
                    return
                await self.log.upload_snapshot(feed.entry, archive, info)
            first = await self.log.trim(feed.entry, info.sequence)
            _LOGGER.info(
                "collection %s: stored the snapshot of generation %d (sequence %d); the log "
                "now starts at %d",
                feed.entry.name,
                info.generation,
                info.sequence,
                first,
            )
        except (OSError, StorageError, *NATS_FAILURES, Unavailable) as error:
            _LOGGER.warning("collection %s: no snapshot stored (%s)", feed.entry.name, error)

    async def _restore(self, feed: Feed, gap: SequenceGap) -> None:
        """Replaces the local copy with the stored snapshot: the log's missing records are in
        it. Refuses a snapshot that does not reach the log's first record."""
        name = feed.entry.name
        with tempfile.TemporaryDirectory(dir=self.registry.root.parent) as scratch:
            archive = Path(scratch) / "snapshot.tar"
            if not await self.log.download_snapshot(feed.entry, archive):
                raise StorageError("the cluster stores no snapshot of it")
            covered: list[snapshots.SnapshotInfo] = []

            def unpack(directory: Path) -> None:
                covered.append(snapshots.unpack(archive, directory))
                if covered[0].sequence + 1 < gap.offered:
                    raise StorageError(
                        f"the snapshot covers sequence {covered[0].sequence}, the log starts at "
                        f"{gap.offered}"
                    )
                write_json_atomic(directory / BINDING_FILE, {"stream": feed.entry.stream})

            await asyncio.to_thread(self.registry.delete, name)
            feed.collection = await asyncio.to_thread(self.registry.restore, name, unpack)
        feed.offered_generation = feed.collection.generation
        _LOGGER.info(
            "collection %s: restored from the snapshot of generation %d (sequence %d); "
            "following the log from %d",
            name,
            covered[0].generation,
            covered[0].sequence,
            covered[0].sequence + 1,
        )

    async def _drop(self, name: str) -> None:
        feed = self.feeds.pop(name, None)
        if feed is not None:
            await feed.stop()
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.registry.delete, name)

    async def _until(self, applied: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            async with self._catalog_applied:
                await self._catalog_applied.wait_for(applied)

        await bounded(wait(), CATALOG_APPLY_S, what)

    async def collection(self, name: str) -> Collection:
        """Served here, or made through another replica and not yet applied here: then this
        waits for the catalog (a client that made a collection reads it on any replica)."""
        feed = self.feeds.get(name)
        if feed is not None:
            return feed.collection
        try:
            return self.registry.get(name)
        except NotFound:
            entry, _ = await self.log.entry(name)  # NotFound when the cluster lacks it too
        await self._until(
            lambda: name in self.feeds and self.feeds[name].entry.stream == entry.stream,
            f"collection {name!r} being made on this replica",
        )
        return self.feeds[name].collection

    # ------------------------------------------------------------------ writes
    async def create_collection(self, name: str, settings: CollectionSettings) -> Collection:
        # Refused here, before the catalog takes settings no replica could serve; the
        # fingerprint makes a replica whose encoder differs refuse the collection.
        settings = await asyncio.to_thread(self.registry.stamped, settings)
        entry = await self.log.create_collection(name, settings)
        await self._until(
            lambda: name in self.feeds and self.feeds[name].entry.stream == entry.stream,
            f"collection {name!r} being made on this replica",
        )
        return self.feeds[name].collection

    async def delete_collection(self, name: str) -> int:
        # Not _feed(): a collection whose log failed here can still be deleted.
        feed = self.feeds.get(name)
        documents = (
            (feed.collection if feed is not None else self.registry.get(name)).snapshot().documents
        )
        entry = await self.log.delete_collection(name)
        await self._until(
            lambda: name not in self.feeds or self.feeds[name].entry.stream != entry.stream,
            f"collection {name!r} being deleted on this replica",
        )
        return documents

    async def upsert(self, name: str, documents: Sequence[StoredDocument]) -> UpsertResult:
        """Publishes the upsert (split into several records when it exceeds the server's
        largest message, each whole documents) and reports it once applied here."""
        feed = await self._feed(name)
        prepared = await asyncio.to_thread(feed.collection.prepare, documents)
        records = prepared.records(self.log.max_payload)
        results = [await self._write(feed, record, part) for part, record in enumerate(records)]
        upserts = [r for r in results if isinstance(r, UpsertResult)]
        last = results[-1]
        return UpsertResult(
            sum(r.inserted for r in upserts),
            sum(r.replaced for r in upserts),
            sum(r.passages for r in upserts),
            feed.collection.generation,
            last.sequence,
        )

    async def delete(self, name: str, doc_ids: Sequence[str]) -> DeleteResult:
        feed = await self._feed(name)
        result = await self._write(feed, encode_delete(list(doc_ids)), 0)
        if isinstance(result, DeleteResult):
            return result
        return DeleteResult(0, [], result.sequence)

    async def _write(self, feed: Feed, record: bytes, part: int) -> UpsertResult | DeleteResult:
        """One record into the log, then waits for this replica to apply it."""
        with tracing.span("log.publish", bytes=len(record)):
            sequence = await self.log.publish(feed.entry, record, f"{request_id.get()}-{part}")
        with tracing.span("log.apply", sequence=sequence):
            reached = await asyncio.to_thread(
                feed.collection.wait_for, sequence, self.options.read_wait_s
            )
        if not reached:
            raise Unavailable(
                f"collection {feed.entry.name!r}: the write is stored in the log as sequence "
                f"{sequence} but this replica has not applied it within "
                f"{self.options.read_wait_s:g} s; it will be, search with min_sequence"
            )
        stored = feed.results.get(sequence)
        if stored is None:  # a re-sent write (applied before) or one whose result was evicted
            return DeleteResult(0, [], sequence)
        return stored

    async def _feed(self, name: str) -> Feed:
        await self.collection(name)
        feed = self.feeds.get(name)
        if feed is None:
            raise Unavailable(f"collection {name!r} is not yet following its log here; retry")
        if feed.failure:
            raise FailedPrecondition(feed.failure)
        return feed

    # ------------------------------------------------------------------ reads
    def lag(self, name: str) -> tuple[int, int]:
        """``(newest log sequence known here, records not yet applied)``."""
        feed = self.feeds.get(name)
        if feed is None:
            return 0, 0
        return feed.log_sequence, feed.lag

    async def log_sequence(self, name: str) -> int:
        """The collection's newest sequence, read from JetStream (a strong read waits for it)."""
        feed = await self._feed(name)
        last = await self.log.last_sequence(feed.entry)
        feed.log_sequence = max(feed.log_sequence, last)
        return last
