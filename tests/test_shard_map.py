"""The shard map's peer handling for real: shard services on loopback gRPC ports, a port with
nothing listening, and the key-value bucket on a real ``nats-server``."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import nats
import pytest
from grpc import aio

from bench.nats_cluster import NatsCluster
from realm.app.supervisor import free_port
from realm.errors import NotFound, Unavailable
from realm.retriever.servicer import Context
from realm.retriever.shard_map import Holder, Peer, ShardMap, first_answer, peer_options
from realm.v1 import shard_pb2, shard_pb2_grpc

OPTIONS = peer_options(tls_ca=None, token=None)


class _Statistics(shard_pb2_grpc.ShardServiceServicer):
    """Answers ShardStatistics with ``documents``, or NOT_FOUND when that is None."""

    def __init__(self, documents: int | None) -> None:
        self.documents = documents
        self.calls = 0

    async def ShardStatistics(  # noqa: N802  (the gRPC method's name)
        self, request: shard_pb2.ShardStatisticsRequest, context: Context
    ) -> shard_pb2.ShardStatisticsResponse:
        self.calls += 1
        if self.documents is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no collection {request.collection!r}")
        return shard_pb2.ShardStatisticsResponse(documents=self.documents or 0)


async def _serve(servicer: _Statistics) -> tuple[aio.Server, str]:
    server = aio.server()
    shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _peer(address: str) -> Peer:
    channel = aio.insecure_channel(address)
    return Peer(address, channel, shard_pb2_grpc.ShardServiceStub(channel))


@contextlib.asynccontextmanager
async def _peers(*addresses: str) -> AsyncIterator[list[Peer]]:
    """Peers as the shard map makes them, their channels closed at the end."""
    peers = [_peer(address) for address in addresses]
    try:
        yield peers
    finally:
        for peer in peers:
            await peer.channel.close(None)


def _statistics(peer: Peer) -> Awaitable[shard_pb2.ShardStatisticsResponse]:
    return peer.stub.ShardStatistics(
        shard_pb2.ShardStatisticsRequest(collection="c", shard=0), timeout=5.0
    )


@contextlib.asynccontextmanager
async def _servers(servicers: list[_Statistics]) -> AsyncIterator[list[str]]:
    """The servicers on loopback ports, in the test's own event loop."""
    started = [await _serve(servicer) for servicer in servicers]
    try:
        yield [address for _, address in started]
    finally:
        for server, _ in started:
            await server.stop(None)


async def test_first_answer_skips_a_replica_that_is_down_and_passes_any_other_status_on() -> None:
    # Only ShardStatistics is served: the other methods stay unimplemented.
    answering = _Statistics(7)  # type: ignore[abstract]
    refusing = _Statistics(None)  # type: ignore[abstract]
    async with (
        _servers([answering, refusing]) as (answers, refuses),
        # Nothing listens on the first address.
        _peers(f"127.0.0.1:{free_port()}", answers, refuses) as (down, good, refuser),
    ):
        await _first_answers(answering, refusing, down, good, refuser)


async def _first_answers(
    answering: _Statistics, refusing: _Statistics, down: Peer, good: Peer, refuser: Peer
) -> None:
    answer = await first_answer([down, good], _statistics, Unavailable)
    assert answer.documents == 7

    # NOT_FOUND is the shard's answer, the same on every replica: the next is not asked.
    with pytest.raises(NotFound, match="no collection 'c'"):
        await first_answer([refuser, good], _statistics, Unavailable)
    assert (answering.calls, refusing.calls) == (1, 1)

    told: list[list[str]] = []

    def none_answered(failures: list[str]) -> Unavailable:
        told.append(failures)
        return Unavailable("shard 0 is down")

    with pytest.raises(Unavailable, match="shard 0 is down"):
        await first_answer([down, down], _statistics, none_answered)
    assert len(told[0]) == 2
    assert all(line.startswith(down.address) for line in told[0])


async def _wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


def test_the_channel_to_a_replica_that_left_the_map_is_closed(tmp_path: Path) -> None:
    with NatsCluster(tmp_path, 1) as cluster:
        asyncio.run(_leaving(cluster.urls))


async def _leaving(urls: str) -> None:
    client = await nats.connect(urls)
    bucket = await client.jetstream().create_key_value(bucket="realm-shards", history=1)
    ttl_s = 1.5
    here = ShardMap(bucket, "here", Holder("127.0.0.1:1", None), ttl_s, OPTIONS)
    stopping = ShardMap(bucket, "stopping", Holder("127.0.0.1:2", frozenset({0})), ttl_s, OPTIONS)
    dying = ShardMap(bucket, "dying", Holder("127.0.0.1:3", frozenset({1})), ttl_s, OPTIONS)
    try:
        for shard_map in (here, stopping, dying):
            await shard_map.start()
        await _wait_for(lambda: here.peers(0) and here.peers(1), 5.0, "both peers are mapped")
        assert [peer.address for peer in here.peers(0)] == ["127.0.0.1:2"]
        assert [peer.address for peer in here.peers(1)] == ["127.0.0.1:3"]
        assert here.connected == {"127.0.0.1:2", "127.0.0.1:3"}

        await stopping.close()  # a clean stop deletes its entry at once
        await _wait_for(lambda: here.connected == {"127.0.0.1:3"}, 3 * ttl_s, "one is closed")
        assert here.peers(0) == []

        for task in dying._tasks:  # dies: its entry stays in the bucket, no longer refreshed
            task.cancel()
        await _wait_for(lambda: not here.connected, 4 * ttl_s, "both channels are closed")
        assert here.peers(1) == []
    finally:
        await here.close()
        await dying.close()
        await client.close()
