"""A shard held by another replica, reached over gRPC (``realm.v1.ShardService``).

The coordinator's ``Shard`` for the shards it does not hold itself: each phase is one call,
with the caller's remaining deadline, less a reserve for the coordinator's own answer. A
replica that cannot be reached (UNAVAILABLE) raises ``ShardUnreachable``, so the coordinator
asks another replica of the shard; any other error is the shard's answer and is passed on with
its status.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from grpc import aio

from realm.errors import DeadlineExceeded
from realm.retriever.bm25 import CorpusStatistics
from realm.retriever.search import Hit, Plan, ShardRanking
from realm.retriever.shard_messages import (
    FUSIONS,
    MODES,
    hit_value,
    ranking_value,
    statistics_message,
    statistics_value,
)
from realm.retriever.sharding import ShardUnreachable, StaleStatistics
from realm.retriever.statistics_cache import StatisticsCache
from realm.retriever.topk import FloatArray, IntArray
from realm.status import received
from realm.v1 import shard_pb2, shard_pb2_grpc

# What every call to a shard leaves of the search's deadline, so that when the shard's replicas
# give up (waiting for a sequence they do not reach), the coordinator still answers the caller
# with the shard it could not search (UNAVAILABLE) before the caller's own deadline turns the
# search into DEADLINE_EXCEEDED: at most this many seconds, and at most this share of the
# deadline, so a short deadline is not spent on the reserve.
REPLY_RESERVE_S = 0.25
REPLY_RESERVE_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class RemoteShard:
    """Collection ``collection`` on the replica at ``address`` (behind ``stub``), as one shard
    of a search."""

    address: str
    stub: "shard_pb2_grpc.ShardServiceAsyncStub"  # a typing-only name: quoted
    collection: str
    # Seconds the search has left from when this was made (its remaining deadline), shared by
    # every call to this replica: a call made after another took its share gets the rest.
    # None: no deadline.
    timeout: float | None = None
    # Read-your-writes: the shard's sequence the caller last wrote, waited for by every phase.
    min_sequence: int = 0
    # Which of the collection's shards this replica is asked for.
    shard: int = 0
    # Sent with every call (the cluster's bearer token).
    metadata: tuple[tuple[str, str], ...] = ()
    # What the shard last reported, shared by the coordinator's searches: a statistics phase it
    # answers is not asked again while the shard stays at that sequence.
    cache: StatisticsCache = field(default_factory=StatisticsCache)
    # When this was made (time.monotonic()): where ``timeout`` counts from.
    made: float = field(default_factory=time.monotonic)
    # This search's use of the cache: the sequence of the statistics it took from it, which
    # the rank phase asks the shard to confirm (empty: asked for just now).
    borrowed: list[int] = field(default_factory=list)

    async def statistics(self, tokens: list[str]) -> CorpusStatistics:
        self.borrowed.clear()
        cached = self.cache.lookup(tokens, self.min_sequence)
        if cached is not None:
            self.borrowed.append(self.cache.sequence)
            return cached
        request = shard_pb2.ShardStatisticsRequest(
            collection=self.collection,
            terms=tokens,
            min_sequence=self.min_sequence,
            shard=self.shard,
        )
        async with self._reaching():
            response = await self.stub.ShardStatistics(
                request, timeout=self._remaining(), metadata=self.metadata
            )
        statistics = statistics_value(response.statistics)
        self.cache.store(statistics, response.sequence)
        return statistics

    async def rank(
        self,
        plan: Plan,
        tokens: list[str],
        statistics: CorpusStatistics | None,
        vector: FloatArray | None,
    ) -> ShardRanking:
        request = shard_pb2.ShardRankRequest(
            collection=self.collection,
            terms=tokens,
            mode=MODES[plan.mode],
            depth=plan.depth,
            fusion=FUSIONS[plan.method],
            filter=dict(plan.filter),
            vector=[] if vector is None else vector.tolist(),
            min_sequence=self.min_sequence,
            shard=self.shard,
            statistics_sequence=self.borrowed[0] if self.borrowed and statistics else 0,
        )
        if statistics is not None:
            request.statistics.CopyFrom(statistics_message(statistics))
        async with self._reaching():
            response = await self.stub.ShardRank(
                request, timeout=self._remaining(), metadata=self.metadata
            )
        self.cache.seen(response.sequence)
        if response.stale:
            raise StaleStatistics(self.shard)
        return ranking_value(response)

    async def hydrate(self, handles: IntArray, scores: FloatArray) -> list[Hit]:
        request = shard_pb2.ShardHydrateRequest(
            collection=self.collection,
            passage_ids=handles.tolist(),
            scores=scores.tolist(),
            shard=self.shard,
        )
        async with self._reaching():
            response = await self.stub.ShardHydrate(
                request, timeout=self._remaining(), metadata=self.metadata
            )
        return [
            hit_value(pid, message)
            for pid, message in zip(response.passage_ids, response.hits, strict=True)
        ]

    def _remaining(self) -> float | None:
        if self.timeout is None:
            return None
        reserve = min(REPLY_RESERVE_S, REPLY_RESERVE_SHARE * self.timeout)
        left = self.timeout - (time.monotonic() - self.made) - reserve
        if left <= 0:
            raise DeadlineExceeded(
                f"the search's deadline passed before shard {self.shard} was asked at "
                f"{self.address}"
            )
        return left

    @asynccontextmanager
    async def _reaching(self) -> AsyncIterator[None]:
        try:
            yield
        except aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                raise ShardUnreachable(f"{self.address}: {error.details()}") from error
            raise received(error.code(), error.details() or "") from error
