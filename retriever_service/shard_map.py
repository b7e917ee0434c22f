"""Which replica holds which shards, kept in a JetStream key-value bucket (``realm-shards``).

Each replica puts its own entry (the address other replicas reach it at, and the shards it holds:
``--serve-shards``) and puts it again every third of ``--shard-map-ttl-seconds``, so an entry
that stopped being refreshed marks a replica that is gone; one that stops cleanly deletes its
entry at once. Every replica watches the bucket, so the map a search is routed by is in memory:
finding a shard's replicas costs no round trip. A replica that died within the TTL is still
listed; asking it fails with UNAVAILABLE and the coordinator moves on to the next replica.
"""

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc import aio
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from realm.channels import ConnectionOptions, aio_channel
from realm.errors import Unavailable
from realm.retriever.jetstream import NATS_FAILURES, stop_task
from realm.status import received
from realm.v1 import shard_pb2, shard_pb2_grpc

_LOGGER = logging.getLogger(__name__)
# Tries at start-up before the replica gives up (about two minutes of waiting in all).
START_ATTEMPTS = 30
SHARD_SERVICE = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name
# Seconds calls still in flight to a replica that left the map get before its channel closes.
PEER_CLOSE_GRACE_S = 5.0
Answer = TypeVar("Answer")


def peer_options(tls_ca: bytes | None, token: str | None) -> ConnectionOptions:
    """How this replica calls the others: one attempt per call (moving on to another replica
    of the shard is the coordinator's retry), over TLS when a CA is given, with the cluster's
    bearer token (every replica is given the same one)."""
    return ConnectionOptions(
        timeout=None,
        max_attempts=1,
        keepalive_s=30.0,
        tls_root_certificate=tls_ca,
        bearer_token=token,
        allow_plaintext_token=True,  # the operator chose plaintext inside the cluster
    )


@dataclass(frozen=True, slots=True)
class Holder:
    """One replica's entry: where it listens and which shards it holds (None: all)."""

    address: str
    shards: frozenset[int] | None

    def holds(self, shard: int) -> bool:
        return self.shards is None or shard in self.shards

    def to_bytes(self) -> bytes:
        shards = None if self.shards is None else sorted(self.shards)
        return json.dumps({"address": self.address, "shards": shards}).encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> "Holder":
        payload = json.loads(value)
        shards = payload["shards"]
        return cls(str(payload["address"]), None if shards is None else frozenset(shards))


@dataclass(frozen=True, slots=True)
class Peer:
    """Another replica, with a connection to its shard service."""

    address: str
    channel: aio.Channel
    stub: "shard_pb2_grpc.ShardServiceAsyncStub"  # a typing-only name: quoted
    # Sent with every call: the bearer token, when the cluster has one.
    metadata: tuple[tuple[str, str], ...] = ()


async def first_answer(
    peers: Sequence[Peer],
    call: Callable[[Peer], Awaitable[Answer]],
    none_answered: Callable[[list[str]], Exception],
) -> Answer:
    """The answer of the first of ``peers`` that gives one, trying them in order.

    Only UNAVAILABLE moves on: the replica is down or unreachable, and another replica of the
    shard holds the same data. Any other status is the answer (a bad request or a missing
    document would be the same everywhere) and is raised as its domain error. When none
    answers, ``none_answered`` gets one ``address: details`` line per replica tried."""
    failures: list[str] = []
    for peer in peers:
        try:
            return await call(peer)
        except aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise received(error.code(), error.details() or "") from error
            failures.append(f"{peer.address}: {error.details()}")
    raise none_answered(failures)


class ShardMap:
    """This replica's entry in the bucket, kept fresh, and every other live replica's."""

    def __init__(
        self,
        bucket: KeyValue,
        replica: str,
        me: Holder,
        ttl_s: float,
        connection: ConnectionOptions,
    ) -> None:
        self._bucket = bucket
        self._connection = connection
        self._replica = replica
        self.me = me
        self._ttl_s = ttl_s
        # replica → its entry and when it was last refreshed (this process's monotonic clock,
        # so clocks that disagree between machines do not matter).
        self._holders: dict[str, tuple[Holder, float]] = {}
        self._channels: dict[str, aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Announces this replica and starts following the others. A bucket that was just made
        has no stream leader for a moment (no responders, timeouts): that is waited out."""
        attempt = 0
        while True:
            try:
                await self._announce()
                watcher = await self._bucket.watchall()
                break
            except NATS_FAILURES as error:
                attempt += 1
                if attempt >= START_ATTEMPTS:
                    raise Unavailable(
                        f"the shard map in NATS did not answer after {attempt} attempts "
                        f"({type(error).__name__}: {error})"
                    ) from error
                _LOGGER.warning("shard map not ready (%s), attempt %d; retrying", error, attempt)
                await asyncio.sleep(min(5.0, 0.5 * attempt))
        self._tasks = [
            asyncio.create_task(self._refresh(), name="shard-map-refresh"),
            asyncio.create_task(self._follow(watcher), name="shard-map-follow"),
            asyncio.create_task(self._close_departed(), name="shard-map-close-departed"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        with contextlib.suppress(*NATS_FAILURES):
            await self._bucket.delete(self._replica)
        for channel in self._channels.values():
            await channel.close(None)

    @property
    def connected(self) -> frozenset[str]:
        """The addresses this replica holds a channel to: every peer ``peers`` has returned
        since the last sweep, less those no live entry names any more."""
        return frozenset(self._channels)

    def peers(self, shard: int) -> list[Peer]:
        """The other live replicas that hold ``shard``, in random order so that searches spread
        over them."""
        now = time.monotonic()
        found = [
            self._peer(holder.address)
            for replica, (holder, seen) in self._holders.items()
            if replica != self._replica and holder.holds(shard) and now - seen < self._ttl_s
        ]
        random.shuffle(found)
        return found

    def _peer(self, address: str) -> Peer:
        channel = self._channels.get(address)
        if channel is None:
            channel = aio_channel(address, [SHARD_SERVICE], self._connection)
            self._channels[address] = channel
        return Peer(
            address, channel, shard_pb2_grpc.ShardServiceStub(channel), self._connection.metadata
        )

    async def _announce(self) -> None:
        await self._bucket.put(self._replica, self.me.to_bytes())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self._announce()
            except NATS_FAILURES as error:
                _LOGGER.warning("could not refresh this replica's shard-map entry: %s", error)

    async def _close_departed(self) -> None:
        """Closes the channels to addresses no live entry names (a replica that stopped, died
        or moved), once a TTL, so a cluster whose replicas come and go does not collect open
        connections. Calls still in flight on one get ``PEER_CLOSE_GRACE_S`` to finish."""
        while True:
            await asyncio.sleep(self._ttl_s)
            now = time.monotonic()
            live = {
                holder.address
                for holder, seen in self._holders.values()
                if now - seen < self._ttl_s
            }
            for address in [address for address in self._channels if address not in live]:
                channel = self._channels.pop(address)
                _LOGGER.info("closing the channel to %s: no live replica is there", address)
                await channel.close(PEER_CLOSE_GRACE_S)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for update in watcher:
            if update is None:
                continue
            if update.operation in (KV_DEL, KV_PURGE) or not update.value:
                self._holders.pop(update.key, None)
                continue
            try:
                self._holders[update.key] = (Holder.from_bytes(update.value), time.monotonic())
            except (ValueError, KeyError, TypeError):
                _LOGGER.warning("shard map: ignored a malformed entry for %s", update.key)
