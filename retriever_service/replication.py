"""Cluster mode: this replica's collections kept equal to the cluster's log.

Any replica accepts a write: it validates, chunks and encodes once, publishes the record (with
its vectors) to the collection's JetStream stream, and answers once JetStream has stored it *and*
this replica has applied it, so the writer reads its own write here at once. Every replica — the
one that took the write too — applies each stream strictly in stream order through
``Collection.apply``, into its own store, write-ahead log, tail and generations, so all replicas
hold the same documents, passages, vectors and BM25 statistics (``Collection.state_digest``).

The catalog (which collections exist, with which settings and stream) is followed the same way:
a collection made or deleted through any replica appears or goes on every replica.

A sharded collection has a stream per shard, and a replica follows those of the shards it holds
(``--serve-shards``), each into a local collection of its own (``docs.shard-1``). A write to
it is split by ``shard_of``, encoded once here and published to each shard's stream; it is
answered once a replica of every shard it touched has applied it: this one for the shards it
holds, another (``ShardApplied``, found through the shard map) for the rest.
"""

import asyncio
import contextlib
import json
import logging
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from realm import tracing
from realm.errors import FailedPrecondition, InvalidArgument, NotFound, StorageError, Unavailable
from realm.files import write_json_atomic
from realm.logs import request_id
from realm.retriever import snapshots
from realm.retriever.analyzer import Analyzer
from realm.retriever.collection import (
    Collection,
    DeleteResult,
    SequenceGap,
    UpsertResult,
    prepare,
)
from realm.retriever.jetstream import (
    NATS_FAILURES,
    CatalogEntry,
    JetStreamLog,
    bounded,
    stop_task,
)
from realm.retriever.log_records import encode_delete
from realm.retriever.registry import Registry
from realm.retriever.settings import ClusterOptions, CollectionSettings
from realm.retriever.shard_map import Holder, Peer, ShardMap, first_answer, peer_options
from realm.retriever.sharding import public_name, shard_name, shard_of
from realm.retriever.store import StoredDocument
from realm.v1 import shard_pb2

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
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

    # The log it follows: an unsharded collection's entry, or one shard's (CatalogEntry.part).
    entry: CatalogEntry
    collection: Collection
    consumer: str
    # The newest sequence this replica knows the log holds (for lag).
    log_sequence: int = 0
    results: OrderedDict[int, UpsertResult | DeleteResult] = field(default_factory=OrderedDict)
    # The newest sequence whose result is in ``results`` (or that was applied before this
    # process followed the log): a write's result is read once this reaches it, not merely
    # once the collection serves it (the applying thread finishes before its result is kept).
    kept: int = 0
    kept_changed: asyncio.Condition = field(default_factory=asyncio.Condition)
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

    async def kept_up_to(self, sequence: int) -> None:
        """Records that every result up to ``sequence`` is kept, waking the writes waiting."""
        async with self.kept_changed:
            self.kept = max(self.kept, sequence)
            self.kept_changed.notify_all()

    async def stop(self) -> None:
        for task in (self.task, self.snapshotting):
            if task is not None:
                await stop_task(task)


class Replication:
    """Follows the catalog and every collection's log; carries out writes through the log."""

    def __init__(
        self, registry: Registry, options: ClusterOptions, replica: str, token: str | None = None
    ) -> None:
        self._log: JetStreamLog | None = None
        # The bearer token this replica sends to the others (they share the cluster's).
        self._token = token
        self.registry = registry
        self.options = options
        self.replica = replica
        self.consumer = f"replica-{replica}"
        # Keyed by local collection name: a sharded collection has one feed per shard held.
        self.feeds: dict[str, Feed] = {}
        # Every collection of the catalog as applied here, held or not.
        self.catalog: dict[str, CatalogEntry] = {}
        self._catalog_applied = asyncio.Condition()
        self._watching: asyncio.Task[None] | None = None
        self._shard_map: ShardMap | None = None
        self._analyzers: dict[str, Analyzer] = {}

    @property
    def log(self) -> JetStreamLog:
        if self._log is None:
            raise Unavailable("this replica is starting: not yet connected to NATS; retry")
        return self._log

    @property
    def shard_map(self) -> ShardMap:
        if self._shard_map is None:
            raise Unavailable("this replica is starting: the shard map is not read yet; retry")
        return self._shard_map

    # ------------------------------------------------------------------ start and stop
    async def start(self, address: str) -> None:
        """Connects to NATS, brings the local collections in line with the catalog, starts
        following it and every log, and returns once each collection is within
        ``max_start_lag`` of its log (or has failed: that one collection then refuses writes
        naming why, and the others are served); then announces in the shard map that
        ``address`` serves the shards held here."""
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
            name, _ = public_name(collection.name)
            if name not in current:
                # nats-py's watcher can end its first pass early (nats-io/nats.py#995: a stale
                # pending count), so a local collection it did not list is read from the catalog
                # before it is dropped: dropping a live one would make it restore from a
                # snapshot while it serves.
                with contextlib.suppress(NotFound):
                    current[name], _ = await self.log.entry(name)
            if name not in current or collection.name not in self._held(current[name]):
                _LOGGER.info(
                    "collection %s is not held here (deleted from the cluster, or a shard not "
                    "in --serve-shards): dropped",
                    collection.name,
                )
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
        held = frozenset(int(s) for s in self.options.serve_shards) or None
        tls_ca = self.options.peer_tls_ca
        self._shard_map = ShardMap(
            self.log.shard_map,
            self.replica,
            Holder(address, held),
            self.options.shard_map_ttl_s,
            peer_options(tls_ca.read_bytes() if tls_ca else None, self._token),
        )
        await self._shard_map.start()

    async def close(self) -> None:
        if self._shard_map is not None:
            await self._shard_map.close()
        if self._watching is not None:
            await stop_task(self._watching)
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

    def _held(self, entry: CatalogEntry) -> dict[str, int | None]:
        """The local collections this replica keeps of ``entry``: local name → shard."""
        if entry.settings.shards == 1:
            return {entry.name: None}
        return {
            shard_name(entry.name, shard): shard
            for shard in range(entry.settings.shards)
            if self.options.holds(shard)
        }

    async def _serve(self, entry: CatalogEntry) -> None:
        """Serves ``entry`` here: each local copy when it was built from the same log, else a
        new empty one that the log then fills."""
        known = self.catalog.get(entry.name)
        if known is not None and known.streams != entry.streams:
            await self._drop(entry.name)  # deleted and made again meanwhile
        self.catalog[entry.name] = entry
        for name, shard in self._held(entry).items():
            log = entry if shard is None else entry.part(shard)
            feed = self.feeds.get(name)
            if feed is not None and feed.entry.stream == log.stream:
                continue
            try:
                local: Collection | None = self.registry.get(name)
            except NotFound:
                local = None
            if local is not None and _bound_stream(local) != log.stream:
                await self._drop_local(name)
                local = None
            if local is None:
                local = await asyncio.to_thread(self.registry.create, name, entry.settings)
                write_json_atomic(local.directory / BINDING_FILE, {"stream": log.stream})
            feed = Feed(log, local, self.consumer)
            feed.task = asyncio.create_task(self._follow(feed), name=f"log-{name}")
            self.feeds[name] = feed

    # ------------------------------------------------------------------ following a log
    async def _follow(self, feed: Feed) -> None:
        """Applies the collection's log from where this replica's files stop, for as long as it
        serves the collection: reconnects after NATS failures, restores the snapshot when the
        records it needs were trimmed, offers a snapshot of each generation it seals."""
        while True:
            try:
                applied = feed.collection.snapshot().sequence
                await feed.kept_up_to(applied)
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
            if messages:
                await feed.kept_up_to(feed.collection.snapshot().sequence)
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
        name = feed.collection.name  # the local copy: one shard of a sharded collection
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
        """Stops serving collection ``name`` and deletes every local copy of it."""
        self.catalog.pop(name, None)
        for local in dict.fromkeys([c.name for c in self.registry.list()] + list(self.feeds)):
            if public_name(local)[0] == name:
                await self._drop_local(local)

    async def _drop_local(self, local: str) -> None:
        feed = self.feeds.pop(local, None)
        if feed is not None:
            await feed.stop()
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.registry.delete, local)

    async def _until(self, applied: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            async with self._catalog_applied:
                await self._catalog_applied.wait_for(applied)

        await bounded(wait(), CATALOG_APPLY_S, what)

    async def entry(self, name: str) -> CatalogEntry:
        """The catalog's entry for ``name`` as applied here; one made through another replica
        a moment ago is waited for (a client that made a collection uses it on any replica)."""
        found = self.catalog.get(name)
        if found is not None:
            return found
        entry, _ = await self.log.entry(name)  # NotFound when the cluster lacks it
        await self._until(
            lambda: name in self.catalog and self.catalog[name].streams == entry.streams,
            f"collection {name!r} being made on this replica",
        )
        return self.catalog[name]

    async def collection(self, name: str) -> Collection:
        """The unsharded collection ``name`` served here (see ``entry`` for one not yet
        applied here). A sharded one is reached through ``shard``."""
        feed = self.feeds.get(name)
        if feed is not None:
            return feed.collection
        with contextlib.suppress(NotFound):
            return self.registry.get(name)
        entry = await self.entry(name)
        if entry.settings.shards > 1:
            raise FailedPrecondition(
                f"collection {name!r} has {entry.settings.shards} shards: this call does not "
                "take a sharded collection"
            )
        await self._until(
            lambda: name in self.feeds and self.feeds[name].entry.stream == entry.stream,
            f"collection {name!r} being made on this replica",
        )
        return self.feeds[name].collection

    async def shards(self, name: str) -> int:
        """How many shards collection ``name`` has (1: unsharded)."""
        if name in self.feeds:  # the common case, without a wait: an unsharded collection
            return 1
        return (await self.entry(name)).settings.shards

    def held(self, name: str, shard: int) -> Collection | None:
        """Shard ``shard`` of collection ``name``, when this replica holds and follows it."""
        feed = self.feeds.get(shard_name(name, shard))
        return None if feed is None else feed.collection

    async def shard(self, name: str, shard: int) -> Collection:
        """Shard ``shard`` of collection ``name`` as held here (an unsharded collection is its
        own shard 0); UNAVAILABLE when this replica does not hold it, so that a coordinator
        asks another."""
        entry = await self.entry(name)
        shards = entry.settings.shards
        if shard >= shards:
            raise InvalidArgument(f"shard={shard} is out of range: {name!r} has {shards} shard(s)")
        if shards == 1:
            return await self.collection(name)
        local = shard_name(name, shard)
        if not self.options.holds(shard):
            raise Unavailable(f"this replica does not hold shard {shard} of {name!r}")
        await self._until(
            lambda: local in self.feeds and self.feeds[local].entry.stream == entry.streams[shard],
            f"shard {shard} of {name!r} being made on this replica",
        )
        return self.feeds[local].collection

    # ------------------------------------------------------------------ writes
    async def create_collection(self, name: str, settings: CollectionSettings) -> CatalogEntry:
        # Refused here, before the catalog takes settings no replica could serve; the
        # fingerprint makes a replica whose encoder differs refuse the collection.
        settings = await asyncio.to_thread(self.registry.stamped, settings)
        entry = await self.log.create_collection(name, settings)
        await self._until(
            lambda: name in self.catalog and self.catalog[name].streams == entry.streams,
            f"collection {name!r} being made on this replica",
        )
        return entry

    async def delete_collection(self, name: str) -> int:
        """Deletes the collection everywhere; returns the documents this replica held of it
        (all of them unless it is sharded and this replica holds only some shards)."""
        documents = sum(
            feed.collection.snapshot().documents
            for local, feed in self.feeds.items()
            if public_name(local)[0] == name
        )
        if name not in self.catalog:  # a collection whose log failed here can still go
            documents = self.registry.get(name).snapshot().documents
        entry = await self.log.delete_collection(name)
        await self._until(
            lambda: name not in self.catalog or self.catalog[name].streams != entry.streams,
            f"collection {name!r} being deleted on this replica",
        )
        return documents

    async def upsert(self, name: str, documents: Sequence[StoredDocument]) -> UpsertResult:
        """Publishes the upsert (split into several records when it exceeds the server's
        largest message, each whole documents) and reports it once applied here."""
        if await self.shards(name) > 1:
            return await self._sharded_upsert(await self.entry(name), documents)
        feed = await self._feed(name)
        prepared = await asyncio.to_thread(feed.collection.prepare, documents)
        records = prepared.records(self.log.max_payload)
        results = [await self._write(feed, record, part) for part, record in enumerate(records)]
        return _upserted(results, feed.collection.generation, results[-1].sequence)

    async def delete(self, name: str, doc_ids: Sequence[str]) -> DeleteResult:
        if await self.shards(name) > 1:
            return await self._sharded_delete(await self.entry(name), doc_ids)
        feed = await self._feed(name)
        result = await self._write(feed, encode_delete(list(doc_ids)), 0)
        if isinstance(result, DeleteResult):
            return result
        return DeleteResult(0, [], result.sequence)

    async def _write(self, feed: Feed, record: bytes, part: int) -> UpsertResult | DeleteResult:
        """One record into the log, then waits for this replica to apply it."""
        sequence = await self._publish(feed.entry, record, f"{request_id.get()}-{part}")
        return (await self._applied_here(feed, [sequence]))[0]

    async def _publish(self, log: CatalogEntry, record: bytes, message_id: str) -> int:
        with tracing.span("log.publish", bytes=len(record)):
            return await self.log.publish(log, record, message_id)

    async def _applied_here(
        self, feed: Feed, sequences: list[int]
    ) -> list[UpsertResult | DeleteResult]:
        """The results of records ``sequences`` of ``feed``'s log, once this replica applied
        them (UNAVAILABLE after ``read_wait_s``)."""
        last = max(sequences)

        async def kept() -> None:
            async with feed.kept_changed:
                await feed.kept_changed.wait_for(lambda: feed.kept >= last)

        with tracing.span("log.apply", sequence=last):
            try:
                await asyncio.wait_for(kept(), self.options.read_wait_s)
                reached = True
            except TimeoutError:
                reached = False
        if not reached:
            raise Unavailable(
                f"collection {feed.entry.name!r}: the write is stored in the log as sequence "
                f"{last} but this replica has not applied it within "
                f"{self.options.read_wait_s:g} s; it will be, search with min_sequence"
            )
        # A re-sent write (applied before) or one whose result was evicted has none kept.
        return [feed.results.get(s) or DeleteResult(0, [], s) for s in sequences]

    async def applied(
        self, name: str, shard: int, sequences: list[int]
    ) -> list[UpsertResult | DeleteResult]:
        """What records ``sequences`` of a shard held here did (``ShardApplied``)."""
        collection = await self.shard(name, shard)
        return await self._applied_here(self.feeds[collection.name], sequences)

    # ------------------------------------------------------------------ sharded writes
    async def _sharded_upsert(
        self, entry: CatalogEntry, documents: Sequence[StoredDocument]
    ) -> UpsertResult:
        """The documents split by shard, each part encoded once here and published to its
        shard's log; answered once a replica of each shard touched has applied its part."""
        shards = entry.settings.shards
        parts: dict[int, list[StoredDocument]] = {}
        for document in documents:
            parts.setdefault(shard_of(document.doc_id, shards), []).append(document)
        encoder = await asyncio.to_thread(self.registry.encoder_for, entry.settings.encoder)
        analyzer = self._analyzers.setdefault(
            entry.settings.language, Analyzer(entry.settings.language)
        )

        async def write(shard: int, part: list[StoredDocument]) -> list[int]:
            prepared = await asyncio.to_thread(
                prepare, part, entry.settings.chunker, analyzer, encoder
            )
            records = prepared.records(self.log.max_payload)
            return [
                await self._publish(entry.part(shard), record, f"{request_id.get()}-{shard}-{n}")
                for n, record in enumerate(records)
            ]

        results, sequences = await self._sharded_write(entry, parts, write)
        return _upserted(results, 0, 0, sequences)

    async def _sharded_delete(self, entry: CatalogEntry, doc_ids: Sequence[str]) -> DeleteResult:
        parts: dict[int, list[str]] = {}
        for doc_id in doc_ids:
            parts.setdefault(shard_of(doc_id, entry.settings.shards), []).append(doc_id)

        async def write(shard: int, part: list[str]) -> list[int]:
            record = encode_delete(part)
            return [await self._publish(entry.part(shard), record, f"{request_id.get()}-{shard}")]

        results, sequences = await self._sharded_write(entry, parts, write)
        deletes = [r for r in results if isinstance(r, DeleteResult)]
        not_found = {i for r in deletes for i in r.not_found}
        return DeleteResult(
            sum(r.deleted for r in deletes),
            [i for i in dict.fromkeys(doc_ids) if i in not_found],
            0,
            sequences,
        )

    async def _sharded_write(
        self,
        entry: CatalogEntry,
        parts: dict[int, T],
        write: Callable[[int, T], Awaitable[list[int]]],
    ) -> tuple[list[UpsertResult | DeleteResult], tuple[int, ...]]:
        """Each shard's part written (``write`` publishes it, returning its sequences) and
        applied by a replica of the shard, all shards at once; the results, and the write's
        last sequence in each shard (0 where it wrote nothing)."""

        async def one(shard: int, part: T) -> list[UpsertResult | DeleteResult]:
            sequences = await write(shard, part)
            last[shard] = max(sequences)
            return await self._shard_applied(entry, shard, sequences)

        last = [0] * entry.settings.shards
        outcomes = await asyncio.gather(*(one(shard, part) for shard, part in parts.items()))
        return [result for outcome in outcomes for result in outcome], tuple(last)

    async def _shard_applied(
        self, entry: CatalogEntry, shard: int, sequences: list[int]
    ) -> list[UpsertResult | DeleteResult]:
        """The results of a shard's records, from this replica when it holds the shard, else
        from the first of the shard's other replicas that answers."""
        local = self.feeds.get(shard_name(entry.name, shard))
        if local is not None:
            return await self._applied_here(local, sequences)
        request = shard_pb2.ShardAppliedRequest(
            collection=entry.name, shard=shard, sequences=sequences
        )

        def applied(peer: Peer) -> Awaitable[shard_pb2.ShardAppliedResponse]:
            return peer.stub.ShardApplied(
                request, timeout=self.options.read_wait_s, metadata=peer.metadata
            )

        def none_answered(failures: list[str]) -> Unavailable:
            return Unavailable(
                f"collection {entry.name!r}: the write is stored in shard {shard}'s log as "
                f"sequence {max(sequences)}, but no replica of the shard reported it applied "
                f"({'; '.join(failures) or 'none is in the shard map'}); it will be, search "
                "with min_shard_sequences"
            )

        response = await first_answer(self.shard_map.peers(shard), applied, none_answered)
        return [
            UpsertResult(response.inserted, response.replaced, response.passages, 0, 0),
            DeleteResult(response.deleted, list(response.not_found), 0),
        ]

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
        """``(newest log sequence known here, records not yet applied)`` of a local
        collection (one shard of a sharded one)."""
        feed = self.feeds.get(name)
        if feed is None:
            return 0, 0
        return feed.log_sequence, feed.lag

    async def log_sequence(self, name: str) -> int:
        """The collection's newest sequence, read from JetStream (a strong read waits for it);
        ``name`` is a local collection (one shard of a sharded one)."""
        feed = self.feeds.get(name)
        if feed is None:
            feed = await self._feed(name)
        last = await self.log.last_sequence(feed.entry)
        feed.log_sequence = max(feed.log_sequence, last)
        return last


def _upserted(
    results: Sequence[UpsertResult | DeleteResult],
    generation: int,
    sequence: int,
    shard_sequences: tuple[int, ...] = (),
) -> UpsertResult:
    upserts = [r for r in results if isinstance(r, UpsertResult)]
    return UpsertResult(
        sum(r.inserted for r in upserts),
        sum(r.replaced for r in upserts),
        sum(r.passages for r in upserts),
        generation,
        sequence,
        shard_sequences,
    )
