"""The gRPC service of a read worker: searches it can answer itself, the rest to the writer.

A worker shares the server's port (``SO_REUSEPORT``), so any call may reach it. It answers a
``Search`` from its replica when that holds exactly the writer's state and relays every other
call, unchanged, to the writer over its loopback port, with the caller's token, request id and
remaining deadline; the shard phases of a sharded search always go to the writer. A relayed
call's status and message are the writer's.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from grpc import aio

from realm import tracing
from realm.logs import request_id
from realm.metrics import RELAYED_KEY
from realm.retriever import validation
from realm.retriever.replica import Replicas
from realm.retriever.response_budget import ResponseBudget
from realm.retriever.search import runs_inline
from realm.retriever.servicer import (
    Context,
    search_response,
)
from realm.retriever.settings import Limits
from realm.v1 import retriever_pb2, retriever_pb2_grpc, shard_pb2, shard_pb2_grpc

Response = TypeVar("Response")
_FORWARDED_KEYS = ("authorization",)


async def relay(
    call: Callable[..., Awaitable[Response]], request: Any, context: Context
) -> Response:
    """``call`` on the writer with the caller's token, request id, trace and remaining
    deadline; the writer's status and message come back as they are."""
    metadata = [
        (key, value) for key, value in context.invocation_metadata() or () if key in _FORWARDED_KEYS
    ]
    metadata.append(("x-request-id", request_id.get()))
    metadata.append((RELAYED_KEY, "1"))  # counted in this worker's metrics, not again
    metadata.extend(tracing.outgoing_metadata())
    try:
        return await call(request, metadata=metadata, timeout=context.time_remaining())
    except aio.AioRpcError as error:
        await context.abort(error.code(), error.details() or "")
        raise  # abort raises; this keeps the type checker sure nothing returns


class ShardRelay(shard_pb2_grpc.ShardServiceServicer):
    """A worker's shard phases: relayed to the writer, which holds the log's tail (a worker's
    generation alone could answer a phase from another state than the next phase reads)."""

    def __init__(self, writer: aio.Channel) -> None:
        self.writer = shard_pb2_grpc.ShardServiceStub(writer)

    async def ShardStatistics(  # noqa: N802 -- gRPC method names are PascalCase
        self, request: shard_pb2.ShardStatisticsRequest, context: Context
    ) -> shard_pb2.ShardStatisticsResponse:
        return await relay(self.writer.ShardStatistics, request, context)

    async def ShardRank(  # noqa: N802
        self, request: shard_pb2.ShardRankRequest, context: Context
    ) -> shard_pb2.ShardRankResponse:
        return await relay(self.writer.ShardRank, request, context)

    async def ShardHydrate(  # noqa: N802
        self, request: shard_pb2.ShardHydrateRequest, context: Context
    ) -> shard_pb2.ShardHydrateResponse:
        return await relay(self.writer.ShardHydrate, request, context)

    async def ShardApplied(  # noqa: N802
        self, request: shard_pb2.ShardAppliedRequest, context: Context
    ) -> shard_pb2.ShardAppliedResponse:
        return await relay(self.writer.ShardApplied, request, context)


class ReplicaServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(self, replicas: Replicas, limits: Limits, writer: aio.Channel) -> None:
        self.replicas = replicas
        self.limits = limits
        self.writer = retriever_pb2_grpc.RetrieverServiceStub(writer)

    async def Search(  # noqa: N802 -- gRPC method names are PascalCase
        self, request: retriever_pb2.SearchRequest, context: Context
    ) -> retriever_pb2.SearchResponse:
        serving = self.replicas.serving(validation.collection_name(request.collection))
        if (
            serving is None
            or request.consistency == retriever_pb2.CONSISTENCY_STRONG
            or serving[1].sequence < request.min_sequence
        ):
            # The writer knows the log and waits for a sequence it has not applied yet.
            return await relay(self.writer.Search, request, context)
        replica, view = serving
        query = validation.search_query(request, self.limits, "")
        budget = ResponseBudget(self.limits)
        if runs_inline(query.mode, view.passages):
            return search_response(replica, query, budget, view)
        return await asyncio.to_thread(search_response, replica, query, budget, view)

    async def BatchSearch(  # noqa: N802
        self, request: retriever_pb2.BatchSearchRequest, context: Context
    ) -> retriever_pb2.BatchSearchResponse:
        return await relay(self.writer.BatchSearch, request, context)

    async def CreateCollection(  # noqa: N802
        self, request: retriever_pb2.CreateCollectionRequest, context: Context
    ) -> retriever_pb2.CreateCollectionResponse:
        return await relay(self.writer.CreateCollection, request, context)

    async def ListCollections(  # noqa: N802
        self, request: retriever_pb2.ListCollectionsRequest, context: Context
    ) -> retriever_pb2.ListCollectionsResponse:
        return await relay(self.writer.ListCollections, request, context)

    async def DeleteCollection(  # noqa: N802
        self, request: retriever_pb2.DeleteCollectionRequest, context: Context
    ) -> retriever_pb2.DeleteCollectionResponse:
        return await relay(self.writer.DeleteCollection, request, context)

    async def Upsert(  # noqa: N802
        self, request_iterator: AsyncIterator[retriever_pb2.UpsertRequest], context: Context
    ) -> retriever_pb2.UpsertResponse:
        return await relay(self.writer.Upsert, request_iterator, context)

    async def Delete(  # noqa: N802
        self, request: retriever_pb2.DeleteRequest, context: Context
    ) -> retriever_pb2.DeleteResponse:
        return await relay(self.writer.Delete, request, context)

    async def GetDocument(  # noqa: N802
        self, request: retriever_pb2.GetDocumentRequest, context: Context
    ) -> retriever_pb2.GetDocumentResponse:
        return await relay(self.writer.GetDocument, request, context)

    async def Stats(  # noqa: N802
        self, request: retriever_pb2.StatsRequest, context: Context
    ) -> retriever_pb2.StatsResponse:
        return await relay(self.writer.Stats, request, context)

    async def Compact(  # noqa: N802
        self, request: retriever_pb2.CompactRequest, context: Context
    ) -> retriever_pb2.CompactResponse:
        return await relay(self.writer.Compact, request, context)

    async def Reindex(  # noqa: N802
        self, request: retriever_pb2.ReindexRequest, context: Context
    ) -> retriever_pb2.ReindexResponse:
        return await relay(self.writer.Reindex, request, context)
