"""gRPC servicer: translates realm.v1 messages to core calls and back, nothing more; every
request is checked by ``validation`` first.

Blocking work (encoding, index builds, scoring, SQLite) runs in worker threads so the event loop
keeps accepting calls, answering health checks and draining on shutdown.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from grpc import aio

from realm import tracing
from realm.errors import FailedPrecondition, Unavailable
from realm.retriever import validation
from realm.retriever.collection import Collection
from realm.retriever.live import View
from realm.retriever.metrics import SEARCH_BY_MODE
from realm.retriever.registry import Registry
from realm.retriever.reindex import ReindexProgress
from realm.retriever.response_budget import ResponseBudget
from realm.retriever.search import Hit, SearchQuery, runs_inline
from realm.retriever.settings import CollectionSettings, Limits
from realm.retriever.sharding import public_name
from realm.retriever.store import PassageRecord, StoredDocument
from realm.retriever.writes import LocalWrites, Writes
from realm.streams import paced
from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc, shard_pb2

if TYPE_CHECKING:  # sharded_reads builds on this module's helpers
    from realm.retriever.jetstream import CatalogEntry
    from realm.retriever.sharded_reads import ShardedReads

SERVICE_NAME = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"].full_name
Context = aio.ServicerContext[Any, Any]
UPSERT_METHOD = f"/{SERVICE_NAME}/Upsert"
TELEMETRY_NAME = "realm-retriever"  # service.name of its spans


def settings_to_proto(settings: CollectionSettings) -> retriever_pb2.CollectionConfig:
    return retriever_pb2.CollectionConfig(
        language=settings.language,
        embedding_model=settings.embedding_model,
        embedding_backend=settings.embedding_backend,
        chunk_words=settings.chunker.words,
        chunk_overlap=settings.chunker.overlap,
        k1=settings.bm25.k1,
        b=settings.bm25.b,
        annoy_trees=settings.annoy.n_trees,
        shards=settings.shards,
    )


def passage_message(record: PassageRecord) -> common_pb2.Passage:
    return common_pb2.Passage(
        passage_id=record.passage_id,
        doc_id=record.doc_id,
        text=record.text,
        start=record.start,
        end=record.end,
    )


def document_response(
    document: StoredDocument, passages: list[PassageRecord]
) -> retriever_pb2.GetDocumentResponse:
    return retriever_pb2.GetDocumentResponse(
        document=common_pb2.Document(
            id=document.doc_id,
            text=document.text,
            title=document.title,
            metadata=document.metadata,
        ),
        passages=[passage_message(p) for p in passages],
    )


def add_hits(
    response: retriever_pb2.SearchResponse | shard_pb2.ShardHydrateResponse, hits: list[Hit]
) -> None:
    """Fills ``response.hits`` in place: building each hit apart and handing the list to the
    constructor copies every message again, a noticeable part of a small search's time."""
    for hit in hits:
        record = hit.passage
        message = response.hits.add(score=hit.score, title=record.title)
        passage = message.passage
        passage.passage_id = record.passage_id
        passage.doc_id = record.doc_id
        passage.text = record.text
        passage.start = record.start
        passage.end = record.end
        metadata = message.metadata
        for key, value in record.metadata.items():  # twice as fast as update() on a map field
            metadata[key] = value


class Searchable(Protocol):
    """What answers searches: the writer's ``Collection`` or a worker's ``Replica``."""

    def snapshot(self) -> View: ...

    def search(self, query: SearchQuery, view: View | None = None) -> list[Hit]: ...


def search_response(
    collection: Searchable, query: SearchQuery, budget: ResponseBudget, view: View | None = None
) -> retriever_pb2.SearchResponse:
    """The answer to one search, as ``Search`` sends it, charged to ``budget`` before it is
    built."""
    started = time.perf_counter()
    view = view or collection.snapshot()  # report the state that actually answered
    response = retriever_pb2.SearchResponse(
        generation=view.generation.number, sequence=view.sequence
    )
    with tracing.span("search", mode=query.mode, k=query.k):
        hits = collection.search(query, view)
    budget.charge(hits)
    add_hits(response, hits)
    SEARCH_BY_MODE[query.mode].observe(time.perf_counter() - started)
    return response


async def fresh_enough(
    collection: Collection,
    writes: Writes,
    min_sequence: int,
    consistency: "retriever_pb2.Consistency.ValueType",
    context: Context,
    read_wait_s: float,
) -> None:
    """Waits until ``collection`` has applied what the read asks for (read-your-writes), at most
    until the call's deadline or ``read_wait_s``; UNAVAILABLE after that, so that a client may
    try another replica."""
    if consistency == retriever_pb2.CONSISTENCY_EVENTUAL:
        return
    wanted = min_sequence
    if consistency == retriever_pb2.CONSISTENCY_STRONG:
        wanted = max(wanted, await writes.log_sequence(collection.name))
    applied = collection.snapshot().sequence
    if applied >= wanted:
        return
    remaining = context.time_remaining()
    # Leave the caller time to receive the clear status rather than its own deadline's.
    timeout = read_wait_s if remaining is None else max(0.0, min(read_wait_s, remaining - 0.1))
    if not await asyncio.to_thread(collection.wait_for, wanted, timeout):
        raise Unavailable(
            f"collection {collection.name!r} has applied writes up to sequence "
            f"{collection.snapshot().sequence} here, not yet min_sequence={wanted}, after "
            f"waiting {timeout:.1f} s; retry (another replica may be ahead)"
        )


class RetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(
        self,
        registry: Registry,
        limits: Limits,
        writes: Writes | None = None,
        read_wait_s: float = 5.0,
        replica: str = "",
        sharded: "ShardedReads | None" = None,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.writes: Writes = writes or LocalWrites(registry)
        self.read_wait_s = read_wait_s
        self.replica = replica
        # Reads of sharded collections (cluster mode only).
        self.sharded = sharded

    def _info(self, collection: Collection) -> retriever_pb2.CollectionInfo:
        stats = collection.stats()
        return retriever_pb2.CollectionInfo(
            name=collection.name,
            config=settings_to_proto(collection.settings),
            documents=stats.documents,
            passages=stats.passages,
            dimension=collection.encoder.dimension,
        )

    async def _sharded_info(
        self, entry: "CatalogEntry", empty: bool = False
    ) -> retriever_pb2.CollectionInfo:
        """A sharded collection's settings, and its documents and passages summed over every
        shard (one replica of each); ``empty``: one just made, which holds none."""
        assert self.sharded is not None
        encoder = await asyncio.to_thread(self.registry.encoder_for, entry.settings.encoder)
        info = retriever_pb2.CollectionInfo(
            name=entry.name,
            config=settings_to_proto(entry.settings),
            dimension=encoder.dimension,
        )
        if not empty:
            totals = await self.sharded.totals(entry)
            info.documents, info.passages = totals.documents, totals.passages
            info.missing_shards.extend(totals.missing)
        return info

    async def _sharded(self, name: str) -> "CatalogEntry | None":
        """The catalog entry of ``name`` when it is sharded; None when it is not (NotFound when
        it does not exist)."""
        if await self.writes.shards(name) == 1 or self.sharded is None:
            return None
        return await self.sharded.replication.entry(name)

    async def CreateCollection(  # noqa: N802 -- gRPC method names are PascalCase
        self, request: retriever_pb2.CreateCollectionRequest, context: Context
    ) -> retriever_pb2.CreateCollectionResponse:
        name = validation.collection_name(request.name, "name")
        settings = validation.collection_settings(request.config, self.registry.default_backend)
        await self.writes.create_collection(name, settings)
        entry = await self._sharded(name)
        if entry is not None:
            info = await self._sharded_info(entry, empty=True)
        else:
            info = self._info(await self.writes.collection(name))
        return retriever_pb2.CreateCollectionResponse(collection=info)

    async def ListCollections(  # noqa: N802
        self, request: retriever_pb2.ListCollectionsRequest, context: Context
    ) -> retriever_pb2.ListCollectionsResponse:
        unsharded = [c for c in self.registry.list() if public_name(c.name)[1] is None]
        infos = await asyncio.to_thread(lambda: [self._info(c) for c in unsharded])
        if self.sharded is not None:
            catalog = self.sharded.replication.catalog
            for entry in [e for e in catalog.values() if e.settings.shards > 1]:
                infos.append(await self._sharded_info(entry))
        infos.sort(key=lambda info: info.name)
        return retriever_pb2.ListCollectionsResponse(collections=infos)

    async def DeleteCollection(  # noqa: N802
        self, request: retriever_pb2.DeleteCollectionRequest, context: Context
    ) -> retriever_pb2.DeleteCollectionResponse:
        name = validation.collection_name(request.name, "name")
        entry = await self._sharded(name)
        if entry is None:
            deleted = await self.writes.delete_collection(name)
            return retriever_pb2.DeleteCollectionResponse(documents_deleted=deleted)
        # This replica may hold none of the shards: the count is every shard's, taken just
        # before the deletion (shards without a replica answering count as none).
        assert self.sharded is not None
        totals = await self.sharded.totals(entry)
        await self.writes.delete_collection(name)
        return retriever_pb2.DeleteCollectionResponse(documents_deleted=totals.documents)

    async def Upsert(  # noqa: N802
        self, request_iterator: AsyncIterator[retriever_pb2.UpsertRequest], context: Context
    ) -> retriever_pb2.UpsertResponse:
        stream = validation.UpsertStream(self.limits)
        async for message in paced(
            request_iterator, self.limits.stream_idle_s, self.limits.max_stream_s, "Upsert"
        ):
            named = stream.add(message)
            if named is not None:
                await self.writes.shards(named)  # fail fast, before the client streams all
        name, documents = stream.finish()
        if not documents:
            if await self.writes.shards(name) > 1:
                return retriever_pb2.UpsertResponse()
            collection = await self.writes.collection(name)
            return retriever_pb2.UpsertResponse(
                generation=collection.generation, sequence=collection.snapshot().sequence
            )
        result = await self.writes.upsert(name, documents)
        return retriever_pb2.UpsertResponse(
            inserted=result.inserted,
            replaced=result.replaced,
            passages=result.passages,
            generation=result.generation,
            sequence=result.sequence,
            shard_sequences=result.shard_sequences,
        )

    async def Delete(  # noqa: N802
        self, request: retriever_pb2.DeleteRequest, context: Context
    ) -> retriever_pb2.DeleteResponse:
        name = validation.collection_name(request.collection)
        await self.writes.shards(name)  # NotFound first
        ids = validation.document_ids(request.ids, self.limits)
        result = await self.writes.delete(name, ids)
        return retriever_pb2.DeleteResponse(
            deleted=result.deleted,
            not_found=result.not_found,
            sequence=result.sequence,
            shard_sequences=result.shard_sequences,
        )

    async def _fresh(
        self,
        collection: Collection,
        request: retriever_pb2.SearchRequest | retriever_pb2.GetDocumentRequest,
        context: Context,
    ) -> None:
        await fresh_enough(
            collection,
            self.writes,
            request.min_sequence,
            request.consistency,
            context,
            self.read_wait_s,
        )

    async def _query(
        self, request: retriever_pb2.SearchRequest, field: str
    ) -> tuple["Collection | CatalogEntry", SearchQuery]:
        """The search's target (an unsharded collection here, or a sharded collection's
        entry) and the query, validated."""
        name = validation.collection_name(request.collection, f"{field}collection")
        entry = await self._sharded(name)
        query = validation.search_query(request, self.limits, field)
        if entry is not None:
            return entry, query
        validation.unsharded_read(request.min_shard_sequences, field)
        return await self.writes.collection(name), query

    async def Search(  # noqa: N802
        self, request: retriever_pb2.SearchRequest, context: Context
    ) -> retriever_pb2.SearchResponse:
        target, query = await self._query(request, "")
        budget = ResponseBudget(self.limits)
        if not isinstance(target, Collection):
            assert self.sharded is not None
            return await self.sharded.search(target, query, request, context, budget)
        await self._fresh(target, request, context)
        if runs_inline(query.mode, target.snapshot().passages):
            return search_response(target, query, budget)
        return await asyncio.to_thread(search_response, target, query, budget)

    async def BatchSearch(  # noqa: N802
        self, request: retriever_pb2.BatchSearchRequest, context: Context
    ) -> retriever_pb2.BatchSearchResponse:
        validation.batch_size(request.requests, self.limits)
        queries = [await self._query(r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        local: list[tuple[int, Collection, SearchQuery]] = []
        for index, ((target, _), search) in enumerate(zip(queries, request.requests, strict=True)):
            if isinstance(target, Collection):
                await self._fresh(target, search, context)
                local.append((index, target, queries[index][1]))
        budget = ResponseBudget(self.limits)  # one budget for the whole batch's response
        answered = await asyncio.to_thread(
            lambda: {i: search_response(c, q, budget) for i, c, q in local}
        )
        responses = []
        for index, ((target, query), search) in enumerate(
            zip(queries, request.requests, strict=True)
        ):
            if isinstance(target, Collection):
                responses.append(answered[index])
            else:  # a sharded collection's search, coordinated here
                assert self.sharded is not None
                field = f"requests[{index}]."
                responses.append(
                    await self.sharded.search(target, query, search, context, budget, field)
                )
        return retriever_pb2.BatchSearchResponse(responses=responses)

    async def GetDocument(  # noqa: N802
        self, request: retriever_pb2.GetDocumentRequest, context: Context
    ) -> retriever_pb2.GetDocumentResponse:
        name = validation.collection_name(request.collection)
        doc_id = validation.document_id(request.id, self.limits)
        entry = await self._sharded(name)
        if entry is not None:
            assert self.sharded is not None
            return await self.sharded.get_document(entry, doc_id, request, context)
        validation.unsharded_read(request.min_shard_sequences, "")
        collection = await self.writes.collection(name)
        await self._fresh(collection, request, context)
        document, passages = await asyncio.to_thread(collection.get, doc_id)
        return document_response(document, passages)

    async def Stats(  # noqa: N802
        self, request: retriever_pb2.StatsRequest, context: Context
    ) -> retriever_pb2.StatsResponse:
        collections = None
        if request.collection:
            name = validation.collection_name(request.collection)
            collections = await self._held(name)
        gathered = await asyncio.to_thread(self.stats, collections, request.state_digest)
        return retriever_pb2.StatsResponse(collections=gathered, replica=self.replica)

    def stats(
        self, collections: list[Collection] | None = None, digest: bool = False
    ) -> list[retriever_pb2.CollectionStats]:
        """What ``Stats`` reports of ``collections`` (all of them by default); the metrics
        endpoint reads it too."""
        out = []
        for collection in self.registry.list() if collections is None else collections:
            stats = collection.stats()
            log_sequence, lag = self.writes.lag(collection.name)
            reindex = self.registry.reindex_status(collection.name)
            name, shard = public_name(collection.name)
            out.append(
                retriever_pb2.CollectionStats(
                    name=name,
                    shard=shard or 0,
                    shards=collection.settings.shards if shard is not None else 0,
                    documents=stats.documents,
                    passages=stats.passages,
                    generation=stats.generation,
                    vocabulary=stats.vocabulary,
                    index_bytes=stats.index_bytes,
                    tail_passages=stats.tail_passages,
                    tombstones=stats.tombstones,
                    wal_bytes=stats.wal_bytes,
                    last_sequence=stats.last_sequence,
                    applied_sequence=stats.last_sequence,
                    log_sequence=max(log_sequence, stats.last_sequence),
                    lag=lag,
                    state_digest=collection.state_digest() if digest else "",
                    embedding_model=collection.settings.embedding_model,
                    embedding_backend=collection.settings.embedding_backend,
                    encoder_fingerprint=collection.settings.encoder_fingerprint,
                    reindex=_reindex_status(reindex) if reindex is not None else None,
                )
            )
        return out

    async def Compact(  # noqa: N802
        self, request: retriever_pb2.CompactRequest, context: Context
    ) -> retriever_pb2.CompactResponse:
        held = await self._held(validation.collection_name(request.collection))
        generations = [await asyncio.to_thread(c.compact) for c in held]
        return retriever_pb2.CompactResponse(
            generation=max(generations, default=0),
            passages=sum(c.snapshot().generation.n_rows for c in held),
        )

    async def _held(self, name: str) -> list[Collection]:
        """The local collections of ``name``: itself, or each shard of it held here."""
        shards = await self.writes.shards(name)
        if shards == 1:
            return [await self.writes.collection(name)]
        held = [self.writes.held(name, shard) for shard in range(shards)]
        return [collection for collection in held if collection is not None]

    async def Reindex(  # noqa: N802
        self, request: retriever_pb2.ReindexRequest, context: Context
    ) -> retriever_pb2.ReindexResponse:
        name = validation.collection_name(request.collection)
        spec = validation.reindex_encoder(request, self.registry.default_backend)
        if not isinstance(self.writes, LocalWrites):
            raise FailedPrecondition(
                "Reindex runs on a single node only: a cluster's replicas take their vectors "
                "from the log, so a model change there is a new collection: create one with "
                "the model and re-ingest (docs/operations.md)"
            )
        progress = await asyncio.to_thread(self.registry.reindex, name, spec)
        return retriever_pb2.ReindexResponse(status=_reindex_status(progress))


def _reindex_status(progress: ReindexProgress) -> retriever_pb2.ReindexStatus:
    return retriever_pb2.ReindexStatus(
        embedding_model=progress.model,
        embedding_backend=progress.backend,
        passages_done=progress.passages_done,
        passages_total=progress.passages_total,
        running=progress.running,
        error=progress.error,
    )
