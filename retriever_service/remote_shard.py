"""A shard held by another replica, reached over gRPC (``realm.v1.ShardService``).

The coordinator's ``Shard`` for the shards it does not hold itself: each phase is one call,
with the caller's remaining deadline, and a failure comes back as the gRPC error it was, for
the coordinator to name the shard.
"""

from dataclasses import dataclass

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
from realm.retriever.topk import FloatArray, IntArray
from realm.v1 import shard_pb2, shard_pb2_grpc


@dataclass(frozen=True, slots=True)
class RemoteShard:
    """Collection ``collection`` on the replica behind ``stub``, as one shard of a search."""

    stub: "shard_pb2_grpc.ShardServiceAsyncStub"  # a typing-only name: quoted
    collection: str
    # Seconds each call may take (the search's remaining deadline); None: no deadline.
    timeout: float | None = None
    # Read-your-writes: the shard's sequence the caller last wrote, waited for by every phase.
    min_sequence: int = 0

    async def statistics(self, tokens: list[str]) -> CorpusStatistics:
        request = shard_pb2.ShardStatisticsRequest(
            collection=self.collection, terms=tokens, min_sequence=self.min_sequence
        )
        response = await self.stub.ShardStatistics(request, timeout=self.timeout)
        return statistics_value(response.statistics)

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
        )
        if statistics is not None:
            request.statistics.CopyFrom(statistics_message(statistics))
        response = await self.stub.ShardRank(request, timeout=self.timeout)
        return ranking_value(response)

    async def hydrate(self, handles: IntArray, scores: FloatArray) -> list[Hit]:
        request = shard_pb2.ShardHydrateRequest(
            collection=self.collection, passage_ids=handles.tolist(), scores=scores.tolist()
        )
        response = await self.stub.ShardHydrate(request, timeout=self.timeout)
        return [
            hit_value(pid, message)
            for pid, message in zip(response.passage_ids, response.hits, strict=True)
        ]
