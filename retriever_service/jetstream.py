"""The cluster's log, kept by NATS JetStream: a catalog of collections and one stream each.

We do not write a replicated log of our own. JetStream stores every message on a quorum of its
servers (Raft) before it acknowledges it, numbers it (the stream sequence is the write's
sequence), and drops a second publish with the same ``Nats-Msg-Id`` within its duplicate window.

- The **catalog** is a key-value bucket: collection name → its settings and its stream. A create
  is the bucket's atomic create, so two replicas racing for one name cannot both win.
- Each collection incarnation has its **own stream** (``REALM_<name>_<id>``): a collection deleted
  and made again under the same name starts a fresh log, never the old one's tail. A sharded
  collection has one per shard (``REALM_<name>_<id>_s<shard>``), each followed by the replicas
  that hold that shard.
- The **shard map** is a key-value bucket too: replica → the address other replicas reach it
  at and the shards it holds, refreshed while it runs (``shard_map.ShardMap``).

Every failure to reach JetStream becomes ``Unavailable``. A write refused before it was sent
(no connection) is not applied; one that was sent but not acknowledged in time may still be
stored once the quorum is back, and a retry with the same request id is then dropped as a
duplicate, so it is applied once either way — never in part.
"""

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from realm.errors import AlreadyExists, NotFound, Unavailable
from realm.retriever.settings import ClusterOptions, CollectionSettings
from realm.retriever.snapshots import SnapshotInfo

_LOGGER = logging.getLogger(__name__)
CATALOG_BUCKET = "realm-collections"
SHARD_MAP_BUCKET = "realm-shards"
SHARD_MAP_MAX_AGE_S = 24 * 3600.0
# Object store of the newest snapshot of each stream, named after the stream.
SNAPSHOT_BUCKET = "realm-snapshots"
SUBJECT_PREFIX = "realm.log"
# JetStream's window for dropping a re-sent write (the stream's duplicate_window).
DUPLICATE_WINDOW_S = 120.0
# How long an administrative request (stream info, catalog read) may take.
REQUEST_TIMEOUT_S = 5.0
T = TypeVar("T")
NATS_FAILURES = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)

# How long a task that is being stopped gets to end before it is cancelled again.
_CANCEL_AGAIN_S = 0.1


async def stop_task(task: "asyncio.Task[None]") -> None:
    """Cancels ``task`` and waits until it has ended, cancelling it again while it runs on.

    One cancellation is not always enough on Python 3.11: asyncio.wait_for, which nats-py waits
    in (a fetch, a watcher's next update), returns a result that arrives together with the
    cancellation and drops the cancellation (CPython gh-86296, fixed in 3.12). A collection
    deleted from the cluster did just that to its follower: the stream's deletion ended the
    pending fetch as the catalog's delete cancelled the follower, which then ran on, retrying the
    gone stream, while the catalog waited for it to end and stopped applying every later change
    on that replica. So every task that waits in nats-py is stopped with this."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_CANCEL_AGAIN_S)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()  # retrieved, so that asyncio does not log it as never retrieved


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One collection as the catalog holds it: its settings and the stream of each shard (one
    for an unsharded collection)."""

    name: str
    streams: tuple[str, ...]
    settings: CollectionSettings

    @property
    def stream(self) -> str:
        """The log this entry names: an unsharded collection's, or one shard's (``part``)."""
        return self.streams[0]

    def part(self, shard: int) -> "CatalogEntry":
        """The entry narrowed to one shard's log, which a replica that holds it follows."""
        return replace(self, streams=(self.streams[shard],))

    def to_bytes(self) -> bytes:
        # "stream" alone is what replicas older than shards read.
        payload = {"stream": self.streams[0], "settings": self.settings.to_json()}
        if len(self.streams) > 1:
            payload["streams"] = list(self.streams)
        return json.dumps(payload).encode()

    @classmethod
    def from_bytes(cls, name: str, value: bytes) -> "CatalogEntry":
        payload = json.loads(value)
        streams = tuple(payload.get("streams", [payload["stream"]]))
        return cls(name, streams, CollectionSettings.from_json(payload["settings"]))

    @property
    def subject(self) -> str:
        return f"{SUBJECT_PREFIX}.{self.stream}"


@asynccontextmanager
async def _unavailable(what: str) -> AsyncIterator[None]:
    """Turns NATS failures into UNAVAILABLE naming what could not be done.

    A write that timed out was not acknowledged, but JetStream may still store it once its
    quorum is back (only the acknowledgement was missing): the message says so, and that a retry
    with the same request id is applied once."""
    try:
        yield
    except NATS_FAILURES as error:
        if isinstance(error, nats.js.errors.NotFoundError):
            raise
        reason = type(error).__name__ + (f": {error}" if str(error) else "")
        raise Unavailable(
            f"{what} failed: NATS JetStream did not acknowledge it ({reason}). It may still "
            "be applied when the NATS cluster has a quorum again; retry with the same "
            "x-request-id (the client library's retries do) and it is applied once"
        ) from error


class JetStreamLog:
    """This replica's connection to the cluster's log."""

    def __init__(
        self,
        client: Client,
        options: ClusterOptions,
        catalog: KeyValue,
        snapshots: ObjectStore,
        shard_map: KeyValue,
    ) -> None:
        self.client = client
        self.stream_api: JetStreamContext = client.jetstream(timeout=REQUEST_TIMEOUT_S)
        self.options = options
        self.catalog = catalog
        self.snapshots = snapshots
        self.shard_map = shard_map

    @classmethod
    async def connect(cls, options: ClusterOptions) -> "JetStreamLog":
        """Connects (retrying until a server answers: a replica waits for NATS rather than
        exit) and opens, or makes, the catalog bucket and the snapshot store."""
        attempt = 0
        while True:
            client: Client | None = None
            try:
                client = await nats.connect(
                    servers=list(options.nats),
                    connect_timeout=2,
                    reconnect_time_wait=0.5,
                    max_reconnect_attempts=-1,
                    name="realm-retriever",
                    error_cb=_log_nats_error,
                )
                stream_api = client.jetstream(timeout=REQUEST_TIMEOUT_S)
                catalog = await _key_value(stream_api, options, CATALOG_BUCKET)
                snapshots = await _snapshot_store(stream_api, options)
                # Entries of replicas that never deleted theirs go after a day; whether a
                # replica is alive is judged by ShardMap from its refreshes, not by this age.
                shard_map = await _key_value(
                    stream_api, options, SHARD_MAP_BUCKET, SHARD_MAP_MAX_AGE_S
                )
                break
            except NATS_FAILURES as error:
                if client is not None:  # connected, but JetStream was not ready: start over
                    await client.close()
                attempt += 1
                _LOGGER.warning(
                    "NATS at %s not ready (%s), attempt %d; retrying",
                    ",".join(options.nats),
                    error,
                    attempt,
                )
                await asyncio.sleep(min(5.0, 0.5 * attempt))
        url = client.connected_url
        _LOGGER.info("connected to NATS JetStream at %s", url.netloc if url else "?")
        return cls(client, options, catalog, snapshots, shard_map)

    async def close(self) -> None:
        await self.client.close()

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (its ``max_payload``) less room for headers."""
        return int(self.client.max_payload) - 4096

    # ------------------------------------------------------------------ catalog
    async def watch_catalog(self) -> KeyValue.KeyWatcher:
        """Every catalog entry now, then a ``None`` marker, then every change as it happens."""
        async with _unavailable("watching the collection catalog"):
            return await self.catalog.watchall()

    async def entry(self, name: str) -> tuple[CatalogEntry, int]:
        """The catalog's entry for ``name`` and its revision; NotFound if there is none."""
        async with _unavailable(f"reading collection {name!r} from the catalog"):
            try:
                found = await self.catalog.get(name)
            except nats.js.errors.KeyNotFoundError as error:
                raise NotFound(
                    f"collection {name!r} does not exist; create it first (realm ingest creates "
                    "it) or check ListCollections"
                ) from error
        assert found.value is not None
        assert found.revision is not None
        return CatalogEntry.from_bytes(name, found.value), found.revision

    async def create_collection(self, name: str, settings: CollectionSettings) -> CatalogEntry:
        """Makes the collection's streams, then claims the name in the catalog; the loser of a
        race removes its streams again and gets ALREADY_EXISTS."""
        stream = f"REALM_{name}_{uuid.uuid4().hex[:12]}"
        streams = (
            (stream,)
            if settings.shards == 1
            else tuple(f"{stream}_s{shard}" for shard in range(settings.shards))
        )
        entry = CatalogEntry(name, streams, settings)
        async with _unavailable(f"creating collection {name!r}"):
            for shard in range(len(streams)):
                part = entry.part(shard)
                await self.stream_api.add_stream(
                    name=part.stream,
                    subjects=[part.subject],
                    num_replicas=self.options.nats_replicas,
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                    discard=api.DiscardPolicy.OLD,
                    duplicate_window=DUPLICATE_WINDOW_S,
                )
            try:
                await self.catalog.create(name, entry.to_bytes())
            except nats.js.errors.KeyWrongLastSequenceError as error:
                for stream in streams:
                    await self._delete_stream(stream)
                raise AlreadyExists(
                    f"collection {name!r} exists already; pick another name or delete it"
                ) from error
        return entry

    async def delete_collection(self, name: str) -> CatalogEntry:
        """Removes the name from the catalog (replicas then drop their copies), then the log and
        its snapshot."""
        entry, revision = await self.entry(name)
        async with _unavailable(f"deleting collection {name!r}"):
            try:
                await self.catalog.delete(name, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError as error:
                raise NotFound(
                    f"collection {name!r} was deleted or re-created meanwhile; check "
                    "ListCollections"
                ) from error
            for stream in entry.streams:
                await self._delete_stream(stream)
                with suppress(nats.js.errors.ObjectNotFoundError):
                    await self.snapshots.delete(stream)
        return entry

    async def _delete_stream(self, stream: str) -> None:
        with suppress(nats.js.errors.NotFoundError):
            await self.stream_api.delete_stream(stream)

    # ------------------------------------------------------------------ log
    async def publish(self, entry: CatalogEntry, payload: bytes, message_id: str) -> int:
        """Stores one log record; returns its sequence once JetStream holds it on a quorum (a
        re-sent record's is the first send's: JetStream dropped the copy)."""
        if not self.client.is_connected:
            raise Unavailable(
                f"collection {entry.name!r}: not connected to NATS (reconnecting); nothing was "
                "applied, retry when the NATS cluster is reachable"
            )
        async with _unavailable(f"writing to collection {entry.name!r}"):
            try:
                ack = await self.stream_api.publish(
                    entry.subject,
                    payload,
                    timeout=self.options.nats_write_timeout_s,
                    stream=entry.stream,
                    headers={api.Header.MSG_ID: message_id},
                )
            except nats.js.errors.NotFoundError as error:
                raise NotFound(f"collection {entry.name!r} was deleted meanwhile") from error
        return int(ack.seq)

    async def last_sequence(self, entry: CatalogEntry) -> int:
        """The sequence of the newest record in the collection's log."""
        return (await self.bounds(entry))[1]

    async def bounds(self, entry: CatalogEntry) -> tuple[int, int]:
        """The first and last sequence the collection's log holds (first is last + 1 when it
        was trimmed empty, 0 when it was never written)."""
        async with _unavailable(f"reading the log position of collection {entry.name!r}"):
            info = await self.stream_api.stream_info(entry.stream)
        assert info.state is not None
        return int(info.state.first_seq), int(info.state.last_seq)

    # ------------------------------------------------------------------ snapshots
    async def snapshot_info(self, entry: CatalogEntry) -> SnapshotInfo | None:
        """What the newest stored snapshot of the collection covers; None if there is none."""
        async with _unavailable(f"reading the snapshot of collection {entry.name!r}"):
            try:
                info = await self.snapshots.get_info(entry.stream)
            except nats.js.errors.ObjectNotFoundError:
                return None
        return SnapshotInfo.from_json(info.description or "{}")

    async def upload_snapshot(self, entry: CatalogEntry, archive: Path, info: SnapshotInfo) -> None:
        """Stores ``archive`` as the collection's snapshot (the object store checks its digest
        on every read)."""
        async with _unavailable(f"storing a snapshot of collection {entry.name!r}"):
            with archive.open("rb") as data:
                await self.snapshots.put(
                    entry.stream,
                    data,
                    meta=api.ObjectMeta(name=entry.stream, description=info.to_json()),
                )

    async def download_snapshot(self, entry: CatalogEntry, into: Path) -> bool:
        """Writes the collection's snapshot to ``into``; False if there is none."""
        async with _unavailable(f"reading the snapshot of collection {entry.name!r}"):
            try:
                with into.open("wb") as file:
                    await self.snapshots.get(entry.stream, writeinto=file)
            except nats.js.errors.ObjectNotFoundError:
                return False
        return True

    async def trim(self, entry: CatalogEntry, covered: int) -> int:
        """Drops log records that no replica needs: those up to ``covered`` (what the newest
        snapshot holds) that every replica's consumer has applied, less the records kept for
        replicas a little behind. Returns the log's new first sequence."""
        async with _unavailable(f"trimming the log of collection {entry.name!r}"):
            consumers = await self.stream_api.consumers_info(entry.stream)
            applied = [c.ack_floor.stream_seq for c in consumers if c.ack_floor is not None]
            keep_from = min([covered, *applied]) + 1 - self.options.snapshot_retain_records
            if keep_from > 1:
                await self.stream_api.purge_stream(entry.stream, seq=keep_from)
        return max(1, keep_from)

    async def subscribe(
        self, entry: CatalogEntry, consumer: str, start: int
    ) -> JetStreamContext.PullSubscription:
        """This replica's durable consumer of the collection's log, from sequence ``start``.

        The replica's own files say how far it got, so the consumer is made again at every
        start rather than trusting where an old one stopped."""
        async with _unavailable(f"following the log of collection {entry.name!r}"):
            with suppress(nats.js.errors.NotFoundError):
                await self.stream_api.delete_consumer(entry.stream, consumer)
            return await self.stream_api.pull_subscribe(
                entry.subject,
                durable=consumer,
                stream=entry.stream,
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    inactive_threshold=24 * 3600.0,
                ),
            )


async def _snapshot_store(stream_api: JetStreamContext, options: ClusterOptions) -> ObjectStore:
    try:
        return await stream_api.object_store(SNAPSHOT_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return await stream_api.create_object_store(
            bucket=SNAPSHOT_BUCKET,
            replicas=options.nats_replicas,
            storage=api.StorageType.FILE,
        )


async def _key_value(
    stream_api: JetStreamContext,
    options: ClusterOptions,
    bucket: str,
    max_age_s: float | None = None,
) -> KeyValue:
    """The bucket, made (one value per key, on ``nats_replicas`` servers) if it is not there."""
    try:
        return await stream_api.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await stream_api.create_key_value(
            bucket=bucket,
            history=1,
            replicas=options.nats_replicas,
            storage=api.StorageType.FILE,
            ttl=max_age_s,
        )


async def _log_nats_error(error: Exception) -> None:
    _LOGGER.warning("NATS connection: %s: %s", type(error).__name__, error)


async def bounded(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """``awaitable`` within ``seconds``, else UNAVAILABLE naming ``what``."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError as error:
        raise Unavailable(f"{what} did not happen within {seconds:g} s; retry") from error
