"""Clients of the retriever service: ``RetrieverClient`` (blocking) and ``AsyncRetrieverClient``
(asyncio), the same methods with the same arguments and results.

Each method is one line over an RPC description (``realm.client.calls``); connection settings
(TLS, token, retries of UNAVAILABLE, keepalive) are ``realm.channels.ConnectionOptions``.
"""

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Unpack

from realm.channels import RETRIEVER_SERVICE, ConnectionOptions, Target
from realm.client import calls
from realm.client.errors import RealmClientError
from realm.client.ingest import IngestLedger
from realm.client.session import Session
from realm.client.transport import AsyncClient, SyncClient
from realm.client.types import (
    CollectionInfo,
    CollectionStats,
    Consistency,
    Document,
    ReindexStatus,
    SearchHit,
    SearchOptions,
    UpsertSummary,
)
from realm.ports import RETRIEVER_TARGET
from realm.v1 import retriever_pb2, retriever_pb2_grpc

Progress = Callable[[int], None]


class RetrieverClient(SyncClient):
    """Talks to one retriever target (``host:port``, or ``dns:///name`` for several replicas)."""

    def __init__(
        self,
        target: Target = RETRIEVER_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
        consistency: Consistency = "session",
    ) -> None:
        """``options`` holds TLS, token, retries and keepalive; ``timeout`` overrides its
        timeouts (the common case, hence its own argument). ``consistency``: how fresh reads
        must be in a cluster (``realm.client.session``); a search may override it."""
        super().__init__(
            target, RETRIEVER_SERVICE, retriever_pb2_grpc.RetrieverServiceStub, timeout, options
        )
        self.session = Session(consistency)

    def create_collection(
        self,
        name: str,
        *,
        language: str = "",
        embedding_model: str = "",
        chunk_words: int = 0,
        embedding_backend: str = "",
        shards: int = 0,
    ) -> CollectionInfo:
        """Unset settings take the server's defaults; they are fixed once the collection exists.
        ``shards`` above 1 splits it over a cluster's replicas (docs/operations.md)."""
        self.session.forget(name)
        return self._calls.unary(
            calls.CREATE_COLLECTION,
            name,
            language=language,
            embedding_model=embedding_model,
            chunk_words=chunk_words,
            embedding_backend=embedding_backend,
            shards=shards,
        )

    def list_collections(self) -> list[CollectionInfo]:
        return self._calls.unary(calls.LIST_COLLECTIONS)

    def delete_collection(self, name: str) -> int:
        """Returns how many documents went with it."""
        self.session.forget(name)
        return self._calls.unary(calls.DELETE_COLLECTION, name)

    def upsert(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        """Streams ``documents`` in batches of one stream; ``progress`` gets each batch's size as
        it is sent. The server applies the whole stream when it ends (and encodes new passages
        then), so there is no deadline: large corpora take minutes on a CPU."""
        messages = calls.upsert_messages(
            collection, _reported(_batches(documents, batch_size), progress)
        )
        summary = self._calls.stream_in("Upsert", messages, calls.upsert_summary)
        self.session.wrote(collection, summary.sequence, summary.shard_sequences)
        return summary

    def ingest(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = 256,
        attempts: int = 8,
        max_pause_s: float = 10.0,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        """Writes a large corpus as a series of acknowledged batches, each its own ``Upsert``.

        Unlike one ``upsert`` stream, no connection has to stay open for the whole corpus: a
        dropped connection, a restarted server or a full write queue costs the batch in flight,
        which is sent again after a pause (up to ``attempts`` times, pauses doubling to
        ``max_pause_s``). Sending a batch twice is harmless: an upsert of the same ids replaces
        them, so a repeated batch counts as replaced. ``progress`` gets each acknowledged
        batch's size. When a batch keeps failing, ``IngestInterrupted.acknowledged`` says how
        many leading documents are durable.
        """
        ledger = IngestLedger(attempts, max_pause_s, progress)
        for batch in _batches(documents, batch_size):
            for pause in ledger.pauses():
                try:
                    done = self.upsert(collection, batch, batch_size=len(batch))
                    break
                except RealmClientError as error:
                    time.sleep(ledger.pause_after(error, pause))
            ledger.acknowledge(len(batch), done)
        return ledger.total

    def delete(self, collection: str, ids: Iterable[str]) -> tuple[int, list[str]]:
        """Deletes documents; returns ``(deleted, ids_not_found)``."""
        deleted, not_found, sequence, shards = self._calls.unary(calls.DELETE, collection, ids)
        self.session.wrote(collection, sequence, shards)
        return deleted, not_found

    def get(self, collection: str, doc_id: str) -> Document:
        read = self.session.read(collection, {})
        return self._calls.unary(
            calls.GET_DOCUMENT,
            collection,
            doc_id,
            read["consistency"],
            read["min_sequence"],
            read["min_shard_sequences"],
        )

    def search(
        self, collection: str, query: str, **options: Unpack[SearchOptions]
    ) -> list[SearchHit]:
        read = self.session.read(collection, options)
        return self._calls.unary(calls.SEARCH, collection, query, **read)

    def batch_search(
        self, collection: str, queries: Sequence[str], **options: Unpack[SearchOptions]
    ) -> list[list[SearchHit]]:
        """Several queries in one call, answered in order (an evaluation's queries, say)."""
        read = self.session.read(collection, options)
        return self._calls.unary(calls.BATCH_SEARCH, collection, queries, **read)

    def stats(self, collection: str = "", *, digest: bool = False) -> list[CollectionStats]:
        """One collection's figures, or every collection's when none is named; ``digest`` also
        computes each one's ``state_digest`` (it reads the whole collection)."""
        return self._calls.unary(calls.STATS, collection, digest)

    def compact(self, collection: str) -> int:
        """Folds the collection's recent writes into a new generation; returns its number."""
        return self._calls.unary(calls.COMPACT, collection)

    def reindex(
        self, collection: str, embedding_model: str, embedding_backend: str = ""
    ) -> ReindexStatus:
        """Starts re-encoding the collection with another model the server offers (a trained
        version, say); searches and writes go on meanwhile and ``stats`` follows its progress.
        ``embedding_backend`` empty: as a new collection of that model would get."""
        return self._calls.unary(calls.REINDEX, collection, embedding_model, embedding_backend)


class AsyncRetrieverClient(AsyncClient):
    """``RetrieverClient`` for asyncio code: every call is a coroutine; ``upsert`` and ``ingest``
    also take async iterables. Use it as ``async with AsyncRetrieverClient(...) as retriever:``."""

    def __init__(
        self,
        target: Target = RETRIEVER_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
        consistency: Consistency = "session",
    ) -> None:
        super().__init__(
            target, RETRIEVER_SERVICE, retriever_pb2_grpc.RetrieverServiceStub, timeout, options
        )
        self.session = Session(consistency)

    async def create_collection(
        self,
        name: str,
        *,
        language: str = "",
        embedding_model: str = "",
        chunk_words: int = 0,
        embedding_backend: str = "",
        shards: int = 0,
    ) -> CollectionInfo:
        self.session.forget(name)
        return await self._calls.unary(
            calls.CREATE_COLLECTION,
            name,
            language=language,
            embedding_model=embedding_model,
            chunk_words=chunk_words,
            embedding_backend=embedding_backend,
            shards=shards,
        )

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._calls.unary(calls.LIST_COLLECTIONS)

    async def delete_collection(self, name: str) -> int:
        self.session.forget(name)
        return await self._calls.unary(calls.DELETE_COLLECTION, name)

    async def upsert(
        self,
        collection: str,
        documents: Iterable[Document] | AsyncIterable[Document],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        """Streams documents (from a list, a generator or an async generator) in batches of one
        stream, applied when it ends (``RetrieverClient.upsert``)."""

        async def messages() -> AsyncIterator[retriever_pb2.UpsertRequest]:
            async for batch in _async_batches(documents, batch_size):
                yield calls.upsert_message(collection, batch)
                if progress is not None:
                    progress(len(batch))

        summary = await self._calls.stream_in("Upsert", messages(), calls.upsert_summary)
        self.session.wrote(collection, summary.sequence, summary.shard_sequences)
        return summary

    async def ingest(
        self,
        collection: str,
        documents: Iterable[Document] | AsyncIterable[Document],
        *,
        batch_size: int = 256,
        attempts: int = 8,
        max_pause_s: float = 10.0,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        """A large corpus in acknowledged, retried batches (``RetrieverClient.ingest``)."""
        ledger = IngestLedger(attempts, max_pause_s, progress)
        async for batch in _async_batches(documents, batch_size):
            for pause in ledger.pauses():
                try:
                    done = await self.upsert(collection, batch, batch_size=len(batch))
                    break
                except RealmClientError as error:
                    await asyncio.sleep(ledger.pause_after(error, pause))
            ledger.acknowledge(len(batch), done)
        return ledger.total

    async def delete(self, collection: str, ids: Iterable[str]) -> tuple[int, list[str]]:
        deleted, not_found, sequence, shards = await self._calls.unary(
            calls.DELETE, collection, ids
        )
        self.session.wrote(collection, sequence, shards)
        return deleted, not_found

    async def get(self, collection: str, doc_id: str) -> Document:
        read = self.session.read(collection, {})
        return await self._calls.unary(
            calls.GET_DOCUMENT,
            collection,
            doc_id,
            read["consistency"],
            read["min_sequence"],
            read["min_shard_sequences"],
        )

    async def search(
        self, collection: str, query: str, **options: Unpack[SearchOptions]
    ) -> list[SearchHit]:
        read = self.session.read(collection, options)
        return await self._calls.unary(calls.SEARCH, collection, query, **read)

    async def batch_search(
        self, collection: str, queries: Sequence[str], **options: Unpack[SearchOptions]
    ) -> list[list[SearchHit]]:
        read = self.session.read(collection, options)
        return await self._calls.unary(calls.BATCH_SEARCH, collection, queries, **read)

    async def stats(self, collection: str = "", *, digest: bool = False) -> list[CollectionStats]:
        return await self._calls.unary(calls.STATS, collection, digest)

    async def compact(self, collection: str) -> int:
        return await self._calls.unary(calls.COMPACT, collection)

    async def reindex(
        self, collection: str, embedding_model: str, embedding_backend: str = ""
    ) -> ReindexStatus:
        return await self._calls.unary(
            calls.REINDEX, collection, embedding_model, embedding_backend
        )


def _batches(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(documents)
    while batch := list(islice(iterator, size)):
        yield batch


def _reported(
    batches: Iterator[list[Document]], progress: Progress | None
) -> Iterator[list[Document]]:
    """The batches, reporting each one's size once it has been handed on (sent)."""
    for batch in batches:
        yield batch
        if progress is not None:
            progress(len(batch))


async def _async_batches(
    documents: Iterable[Document] | AsyncIterable[Document], size: int
) -> AsyncIterator[list[Document]]:
    batch: list[Document] = []
    if isinstance(documents, AsyncIterable):
        async for document in documents:
            batch.append(document)
            if len(batch) == size:
                yield batch
                batch = []
    else:
        for chunk in _batches(documents, size):
            yield chunk
    if batch:
        yield batch
