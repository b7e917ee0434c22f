"""The reads of a sharded collection, coordinated by whichever replica a client called.

Clients and the generator keep one address: any replica answers ``Search``, ``GetDocument`` and
a collection's figures, asking the replicas that hold the other shards (found in the shard map)
over ``ShardService``. Each shard is asked on this replica first when it holds it, then on the
others in random order; the call's remaining deadline goes with every request, and each shard
waits for the caller's sequence in it (read-your-writes, one sequence per shard).
"""

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

from realm import tracing
from realm.errors import NotFound
from realm.retriever import validation
from realm.retriever.analyzer import Analyzer
from realm.retriever.collection import Collection
from realm.retriever.jetstream import CatalogEntry
from realm.retriever.metrics import SEARCH_BY_MODE
from realm.retriever.remote_shard import RemoteShard
from realm.retriever.replication import Replication
from realm.retriever.response_budget import ResponseBudget
from realm.retriever.search import SearchQuery
from realm.retriever.servicer import Context, add_hits, document_response, fresh_enough
from realm.retriever.shard_map import Peer, first_answer
from realm.retriever.sharding import (
    Coordinator,
    LocalShard,
    Shard,
    ShardDown,
    ShardedHits,
    shard_of,
)
from realm.retriever.statistics_cache import StatisticsCache
from realm.v1 import retriever_pb2, retriever_pb2_grpc, shard_pb2

# Metadata that marks a GetDocument one replica passed on to another holding the shard: that
# one answers or fails, and never passes it on again.
FORWARDED_KEY = "x-realm-shard-forwarded"


@dataclass(frozen=True, slots=True)
class Totals:
    documents: int
    passages: int
    # Shards no replica answered for: the figures count only the others.
    missing: list[int]


class ShardedReads:
    """Searches, documents and figures of the sharded collections of one cluster."""

    def __init__(self, replication: Replication, read_wait_s: float) -> None:
        self.replication = replication
        self.read_wait_s = read_wait_s
        # One per collection incarnation (its streams), made once: loading its encoder may take
        # a while the first time, so it is done off the event loop.
        self._coordinators: dict[tuple[str, ...], Coordinator] = {}
        # Each shard's statistics as a replica last reported them (per collection incarnation).
        self._remembered: dict[tuple[tuple[str, ...], int], StatisticsCache] = {}

    async def search(
        self,
        entry: CatalogEntry,
        query: SearchQuery,
        request: retriever_pb2.SearchRequest,
        context: Context,
        budget: ResponseBudget,
        field: str = "",
    ) -> retriever_pb2.SearchResponse:
        started = time.perf_counter()
        replicas = await self._replicas(entry, request, context, field)
        coordinator = await self._coordinator(entry)
        with tracing.span("search", mode=query.mode, k=query.k, shards=entry.settings.shards):
            found: ShardedHits = await coordinator.search(replicas, query, request.allow_partial)
        budget.charge(found.hits)
        response = retriever_pb2.SearchResponse(missing_shards=found.missing_shards)
        add_hits(response, found.hits)
        SEARCH_BY_MODE[query.mode].observe(time.perf_counter() - started)
        return response

    async def _coordinator(self, entry: CatalogEntry) -> Coordinator:
        coordinator = self._coordinators.get(entry.streams)
        if coordinator is None:
            self._forget_deleted()
            settings = entry.settings
            registry = self.replication.registry
            encoder = await asyncio.to_thread(registry.encoder_for, settings.encoder)
            coordinator = Coordinator(Analyzer(settings.language), encoder, settings.fusion)
            self._coordinators[entry.streams] = coordinator
        return coordinator

    def _forget_deleted(self) -> None:
        """Drops what is kept of collections deleted (or made again) since."""
        current = {entry.streams for entry in self.replication.catalog.values()}
        for streams in [s for s in self._coordinators if s not in current]:
            del self._coordinators[streams]
        for key in [k for k in self._remembered if k[0] not in current]:
            del self._remembered[key]

    async def _replicas(
        self,
        entry: CatalogEntry,
        request: retriever_pb2.SearchRequest,
        context: Context,
        field: str,
    ) -> list[list[Shard]]:
        """Each shard's replicas, best placed first: this one (once it has applied what the
        read asks for), then the others, each told to wait for the same."""
        minimums = await self._minimums(entry, request, field)
        remaining = context.time_remaining()
        replicas: list[list[Shard]] = []
        for shard in range(entry.settings.shards):
            held: list[Shard] = []
            local = self.replication.held(entry.name, shard)
            if local is not None:
                await self._fresh(local, minimums[shard], context)
                held.append(LocalShard(local.searcher, local.snapshot()))
            held += [
                RemoteShard(
                    peer.address,
                    peer.stub,
                    entry.name,
                    remaining,
                    minimums[shard],
                    shard,
                    peer.metadata,
                    self._remembered.setdefault((entry.streams, shard), StatisticsCache()),
                )
                for peer in self.replication.shard_map.peers(shard)
            ]
            replicas.append(held)
        return replicas

    async def _minimums(
        self,
        entry: CatalogEntry,
        request: retriever_pb2.SearchRequest | retriever_pb2.GetDocumentRequest,
        field: str,
    ) -> list[int]:
        """The sequence each shard must have applied: the caller's, or with ``STRONG`` each
        shard log's newest."""
        shards = entry.settings.shards
        minimums = validation.shard_sequences(request.min_shard_sequences, shards, field)
        if request.consistency == retriever_pb2.CONSISTENCY_STRONG:
            log = self.replication.log
            for shard in range(shards):
                newest = await log.last_sequence(entry.part(shard))
                minimums[shard] = max(minimums[shard], newest)
        return minimums

    async def _fresh(self, local: Collection, minimum: int, context: Context) -> None:
        await fresh_enough(
            local,
            self.replication,
            minimum,
            retriever_pb2.CONSISTENCY_SESSION,
            context,
            self.read_wait_s,
        )

    async def get_document(
        self,
        entry: CatalogEntry,
        doc_id: str,
        request: retriever_pb2.GetDocumentRequest,
        context: Context,
    ) -> retriever_pb2.GetDocumentResponse:
        """The document from its shard: here when this replica holds it, else passed on to a
        replica that does (which answers it as its own)."""
        shard = shard_of(doc_id, entry.settings.shards)
        local = self.replication.held(entry.name, shard)
        if local is None:
            return await self._forward(entry, shard, request, context)
        minimums = await self._minimums(entry, request, "")
        await self._fresh(local, minimums[shard], context)
        try:
            document, passages = local.get(doc_id)
        except NotFound as error:
            raise NotFound(f"document id={doc_id!r} is not in collection {entry.name!r}") from error
        return document_response(document, passages)

    async def _forward(
        self,
        entry: CatalogEntry,
        shard: int,
        request: retriever_pb2.GetDocumentRequest,
        context: Context,
    ) -> retriever_pb2.GetDocumentResponse:
        metadata = dict(context.invocation_metadata() or ())
        if FORWARDED_KEY in metadata:
            raise ShardDown(shard, [])

        def get(peer: Peer) -> Awaitable[retriever_pb2.GetDocumentResponse]:
            return retriever_pb2_grpc.RetrieverServiceStub(peer.channel).GetDocument(
                request,
                metadata=[*peer.metadata, (FORWARDED_KEY, "1")],
                timeout=context.time_remaining(),
            )

        return await first_answer(
            self.replication.shard_map.peers(shard), get, partial(ShardDown, shard)
        )

    async def totals(self, entry: CatalogEntry) -> Totals:
        """Live documents and passages over every shard (one replica of each), and the shards
        no replica answered for (a listing still lists, a deletion still counts what it can)."""
        documents = passages = 0
        missing: list[int] = []
        for shard in range(entry.settings.shards):
            local = self.replication.held(entry.name, shard)
            if local is not None:
                view = local.snapshot()
                documents += view.documents
                passages += view.passages
                continue
            try:
                response = await self._statistics(entry, shard)
            except ShardDown:
                missing.append(shard)
                continue
            documents += response.documents
            passages += response.statistics.passages
        return Totals(documents, passages, missing)

    async def _statistics(
        self, entry: CatalogEntry, shard: int
    ) -> shard_pb2.ShardStatisticsResponse:
        request = shard_pb2.ShardStatisticsRequest(collection=entry.name, shard=shard)

        def statistics(peer: Peer) -> Awaitable[shard_pb2.ShardStatisticsResponse]:
            return peer.stub.ShardStatistics(
                request, timeout=self.read_wait_s, metadata=peer.metadata
            )

        return await first_answer(
            self.replication.shard_map.peers(shard), statistics, partial(ShardDown, shard)
        )
