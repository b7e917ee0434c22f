"""gRPC servicer of the shard phases: a replica's answer for the shard it holds, to the replica
that coordinates a search (``sharding.Coordinator`` through ``remote_shard.RemoteShard``).

Every request is checked by ``validation`` first. Each phase reads the view served when it
arrives: writes between the phases of one search can move the statistics a little, as in
Elasticsearch's ``dfs_query_then_fetch``; ``min_sequence`` makes a phase wait for a write.
"""

import asyncio

from realm.errors import FailedPrecondition
from realm.retriever import validation
from realm.retriever.collection import Collection, DeleteResult, UpsertResult
from realm.retriever.replication import Replication
from realm.retriever.servicer import Context, add_hits, fresh_enough
from realm.retriever.settings import Limits
from realm.retriever.shard_messages import ranking_message, statistics_message
from realm.retriever.writes import Writes
from realm.v1 import retriever_pb2, shard_pb2, shard_pb2_grpc

SHARD_SERVICE_NAME = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name


class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    def __init__(
        self,
        writes: Writes,
        limits: Limits,
        read_wait_s: float,
        replication: Replication | None = None,
    ) -> None:
        self.writes = writes
        self.limits = limits
        self.read_wait_s = read_wait_s
        self.replication = replication

    async def _collection(
        self, name: str, shard: int, min_sequence: int, context: Context
    ) -> Collection:
        collection = await self.writes.shard(validation.collection_name(name), shard)
        await fresh_enough(
            collection,
            self.writes,
            min_sequence,
            retriever_pb2.CONSISTENCY_SESSION,
            context,
            self.read_wait_s,
        )
        return collection

    async def ShardStatistics(  # noqa: N802 -- gRPC method names are PascalCase
        self, request: shard_pb2.ShardStatisticsRequest, context: Context
    ) -> shard_pb2.ShardStatisticsResponse:
        collection = await self._collection(
            request.collection, request.shard, request.min_sequence, context
        )
        terms = validation.shard_terms(request.terms, self.limits)
        view = collection.snapshot()
        statistics = view.term_statistics(terms)
        return shard_pb2.ShardStatisticsResponse(
            statistics=statistics_message(statistics),
            sequence=view.sequence,
            documents=view.documents,
        )

    async def ShardRank(  # noqa: N802
        self, request: shard_pb2.ShardRankRequest, context: Context
    ) -> shard_pb2.ShardRankResponse:
        collection = await self._collection(
            request.collection, request.shard, request.min_sequence, context
        )
        terms = validation.shard_terms(request.terms, self.limits)
        plan = validation.shard_plan(request, self.limits, collection.settings.fusion)
        vector = validation.shard_vector(request.vector, plan, collection.dimension)
        statistics = (
            validation.shard_statistics(request.statistics, self.limits)
            if request.HasField("statistics")
            else None
        )
        view = collection.snapshot()
        if request.statistics_sequence and request.statistics_sequence != view.sequence:
            return shard_pb2.ShardRankResponse(stale=True, sequence=view.sequence)
        ranking = await asyncio.to_thread(
            collection.searcher.rank, view, plan, terms, statistics, vector
        )
        return ranking_message(ranking, view.pids(ranking.rows), view.sequence)

    async def ShardHydrate(  # noqa: N802
        self, request: shard_pb2.ShardHydrateRequest, context: Context
    ) -> shard_pb2.ShardHydrateResponse:
        collection = await self._collection(request.collection, request.shard, 0, context)
        pids, scores = validation.shard_hydration(request, self.limits)
        hits = await asyncio.to_thread(collection.searcher.hydrate_passages, pids, scores)
        response = shard_pb2.ShardHydrateResponse(passage_ids=[h.passage.pid for h in hits])
        add_hits(response, hits)
        return response

    async def ShardApplied(  # noqa: N802
        self, request: shard_pb2.ShardAppliedRequest, context: Context
    ) -> shard_pb2.ShardAppliedResponse:
        name = validation.collection_name(request.collection)
        sequences = validation.applied_sequences(request.sequences)
        if self.replication is None:
            raise FailedPrecondition(
                "ShardApplied answers for sharded collections, which only a cluster holds"
            )
        results = await self.replication.applied(name, request.shard, sequences)
        upserts = [r for r in results if isinstance(r, UpsertResult)]
        deletes = [r for r in results if isinstance(r, DeleteResult)]
        return shard_pb2.ShardAppliedResponse(
            inserted=sum(r.inserted for r in upserts),
            replaced=sum(r.replaced for r in upserts),
            passages=sum(r.passages for r in upserts),
            deleted=sum(r.deleted for r in deletes),
            not_found=[i for r in deletes for i in r.not_found],
        )
