"""A small asyncio gRPC load generator: fixed concurrency, bounded by request count and time.

Reports queries/s, status counts and latency percentiles; every request it sends is to the
loopback server the benchmark started itself.
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
    target: str, requests: list[retriever_pb2.SearchRequest], concurrency: int, max_seconds: float
) -> LoadResult:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    next_index = 0
    deadline = time.monotonic() + max_seconds
    async with aio.insecure_channel(target) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)

        async def worker() -> None:
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
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(len(latencies), seconds, dict(statuses), latencies)


def run_load(
    target: str,
    requests: list[retriever_pb2.SearchRequest],
    concurrency: int,
    max_seconds: float = 120,
) -> LoadResult:
    return asyncio.run(_drive(target, requests, concurrency, max_seconds))


def summary(result: LoadResult) -> str:
    return (
        f"{result.requests} requests, {result.statuses}, "
        f"p50 {statistics.median(result.latencies_ms):.1f} ms, p99 {result.percentile(99):.1f} ms"
    )
