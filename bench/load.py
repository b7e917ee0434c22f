"""A small asyncio gRPC load generator: fixed concurrency, bounded by request count and time.

Reports queries/s, status counts and latency percentiles; every request it sends is to the
loopback server the benchmark started itself. Clients can each have a connection of their own
(``connections``), as separate client processes would: a server whose processes share a port
(``--workers``) is spread over by connection, not by call.
"""

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import grpc
from grpc import aio

from realm.v1 import retriever_pb2, retriever_pb2_grpc


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[str, int]
    latencies_ms: list[float]

    @property
    def qps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _drive(
    target: str,
    requests: list[retriever_pb2.SearchRequest],
    concurrency: int,
    max_seconds: float,
    connections: int,
) -> LoadResult:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    next_index = 0
    deadline = time.monotonic() + max_seconds
    # A local subchannel pool per channel: otherwise channels to one target share a connection.
    channels = [
        aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    try:
        stubs = [retriever_pb2_grpc.RetrieverServiceStub(channel) for channel in channels]
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), max_seconds
        )

        async def worker(stub: "retriever_pb2_grpc.RetrieverServiceAsyncStub") -> None:
            nonlocal next_index
            while next_index < len(requests) and time.monotonic() < deadline:
                request = requests[next_index]
                next_index += 1
                started = time.perf_counter()
                try:
                    await stub.Search(request, timeout=30)
                    statuses["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    statuses[error.code().name] += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(stubs[i % connections]) for i in range(concurrency)))
        seconds = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close(None)
    return LoadResult(len(latencies), seconds, dict(statuses), latencies)


def run_load(
    target: str,
    requests: list[retriever_pb2.SearchRequest],
    concurrency: int,
    max_seconds: float = 120,
    connections: int = 1,
) -> LoadResult:
    """``concurrency`` clients sharing ``connections`` connections round-robin."""
    return asyncio.run(_drive(target, requests, concurrency, max_seconds, connections))


def summary(result: LoadResult) -> str:
    return (
        f"{result.requests} requests, {result.statuses}, "
        f"p50 {statistics.median(result.latencies_ms):.1f} ms, p99 {result.percentile(99):.1f} ms"
    )
