"""``RealmClient`` and ``AsyncRealmClient``: one object for both services, sync or asyncio.

Collections, documents and search go to the retriever; ``ask`` and ``ask_stream`` go to the
generator. Either target may be omitted when only the other service is used. Results are the
dataclasses of ``realm.client.retriever`` and ``realm.client.generator``; failures are the typed
exceptions of ``realm.client.errors``, carrying the server's message.
"""

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal

from grpc import aio

from realm.channels import (
    GENERATOR_SERVICE,
    RETRIEVER_SERVICE,
    ConnectionOptions,
    Target,
    aio_channel,
)
from realm.client.errors import IngestInterrupted, RealmClientError, translated_errors
from realm.client.generator import (
    Answer,
    GeneratorClient,
    Task,
    answer_from_proto,
    generate_request,
)
from realm.client.retriever import (
    NOTHING_WRITTEN,
    TRANSIENT,
    CollectionInfo,
    Document,
    Mode,
    RetrieverClient,
    SearchHit,
    UpsertSummary,
    added,
    collection_info,
    document_message,
    hits_from_proto,
    retry_pauses,
    search_request,
    upsert_summary,
)
from realm.v1 import generator_pb2, generator_pb2_grpc, retriever_pb2, retriever_pb2_grpc

Progress = Callable[[int], None]


class RealmClient:
    """Synchronous access to a retriever and a generator.

    >>> with RealmClient(retriever="localhost:50051", generator="localhost:50052") as realm:
    ...     realm.upsert("notes", [Document("a", "Writes are fsynced before they are acked.")])
    ...     print(realm.ask("when is a write acked?", "notes").text)
    """

    def __init__(
        self,
        retriever: Target | None = None,
        generator: Target | None = None,
        *,
        options: ConnectionOptions | None = None,
    ) -> None:
        if retriever is None and generator is None:
            raise ValueError("give a retriever target, a generator target, or both")
        options = options or ConnectionOptions()
        self._retriever = None if retriever is None else RetrieverClient(retriever, options=options)
        self._generator = None if generator is None else GeneratorClient(generator, options=options)

    def __enter__(self) -> "RealmClient":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for part in (self._retriever, self._generator):
            if part is not None:
                part.close()

    @property
    def retriever(self) -> RetrieverClient:
        if self._retriever is None:
            raise ValueError("this client has no retriever target; pass retriever=HOST:PORT")
        return self._retriever

    @property
    def generator(self) -> GeneratorClient:
        if self._generator is None:
            raise ValueError("this client has no generator target; pass generator=HOST:PORT")
        return self._generator

    def create_collection(self, name: str, **settings: Any) -> CollectionInfo:
        return self.retriever.create_collection(name, **settings)

    def list_collections(self) -> list[CollectionInfo]:
        return self.retriever.list_collections()

    def delete_collection(self, name: str) -> int:
        return self.retriever.delete_collection(name)

    def upsert(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        return self.retriever.upsert(
            collection, documents, batch_size=batch_size, progress=progress
        )

    def ingest(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        """A large corpus in acknowledged, retried batches (``RetrieverClient.ingest``)."""
        return self.retriever.ingest(
            collection, documents, batch_size=batch_size, progress=progress
        )

    def delete(self, collection: str, ids: Iterable[str]) -> tuple[int, list[str]]:
        return self.retriever.delete(collection, ids)

    def get(self, collection: str, doc_id: str) -> Document:
        return self.retriever.get(collection, doc_id)

    def compact(self, collection: str) -> int:
        """Folds recent writes into a new index generation (after a bulk load, say)."""
        return self.retriever.compact(collection)

    def search(self, collection: str, query: str, **options: Any) -> list[SearchHit]:
        return self.retriever.search(collection, query, **options)

    def ask(self, question: str, collection: str, **options: Any) -> Answer:
        """``options`` are those of ``generate_request`` (k, mode, task, fields, …)."""
        return self.generator.ask(generate_request(question, collection, **options))

    def ask_stream(self, question: str, collection: str, **options: Any) -> Iterator[str | Answer]:
        """Text pieces as generated, then the ``Answer``; breaking out cancels generation."""
        return self.generator.ask_stream(generate_request(question, collection, **options))


class AsyncRealmClient:
    """The same API for asyncio code: every call is a coroutine, ``ask_stream`` an async
    iterator. Use it as ``async with AsyncRealmClient(...) as realm:``."""

    def __init__(
        self,
        retriever: Target | None = None,
        generator: Target | None = None,
        *,
        options: ConnectionOptions | None = None,
    ) -> None:
        if retriever is None and generator is None:
            raise ValueError("give a retriever target, a generator target, or both")
        self.options = options or ConnectionOptions()
        self._metadata = self.options.metadata
        self._channels: list[aio.Channel] = []
        self._retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub | None = None
        self._generator: generator_pb2_grpc.GeneratorServiceAsyncStub | None = None
        if retriever is not None:
            channel = aio_channel(retriever, [RETRIEVER_SERVICE], self.options)
            self._channels.append(channel)
            self._retriever = retriever_pb2_grpc.RetrieverServiceStub(channel)
        if generator is not None:
            channel = aio_channel(generator, [GENERATOR_SERVICE], self.options)
            self._channels.append(channel)
            self._generator = generator_pb2_grpc.GeneratorServiceStub(channel)

    async def __aenter__(self) -> "AsyncRealmClient":
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)

    def _retrieval(self) -> "retriever_pb2_grpc.RetrieverServiceAsyncStub":
        if self._retriever is None:
            raise ValueError("this client has no retriever target; pass retriever=HOST:PORT")
        return self._retriever

    def _generation(self) -> "generator_pb2_grpc.GeneratorServiceAsyncStub":
        if self._generator is None:
            raise ValueError("this client has no generator target; pass generator=HOST:PORT")
        return self._generator

    async def create_collection(
        self, name: str, *, language: str = "", embedding_model: str = "", chunk_words: int = 0
    ) -> CollectionInfo:
        request = retriever_pb2.CreateCollectionRequest(
            name=name,
            config=retriever_pb2.CollectionConfig(
                language=language, embedding_model=embedding_model, chunk_words=chunk_words
            ),
        )
        with translated_errors():
            response = await self._retrieval().CreateCollection(
                request, timeout=self.options.timeout, metadata=self._metadata
            )
        return collection_info(response.collection)

    async def list_collections(self) -> list[CollectionInfo]:
        with translated_errors():
            response = await self._retrieval().ListCollections(
                retriever_pb2.ListCollectionsRequest(),
                timeout=self.options.timeout,
                metadata=self._metadata,
            )
        return [collection_info(c) for c in response.collections]

    async def delete_collection(self, name: str) -> int:
        with translated_errors():
            response = await self._retrieval().DeleteCollection(
                retriever_pb2.DeleteCollectionRequest(name=name),
                timeout=self.options.timeout,
                metadata=self._metadata,
            )
        return int(response.documents_deleted)

    async def upsert(
        self,
        collection: str,
        documents: Iterable[Document] | AsyncIterable[Document],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        """Streams documents (from a list, a generator or an async generator) in batches; the
        server applies the whole stream at once when it ends, so there is no deadline."""

        async def batches() -> AsyncIterator[retriever_pb2.UpsertRequest]:
            async for batch in _batches(_aiter(documents), batch_size):
                yield _upsert_message(collection, batch, progress)

        with translated_errors():
            response = await self._retrieval().Upsert(
                batches(), timeout=None, metadata=self._metadata
            )
        return upsert_summary(response)

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
        total, acknowledged = NOTHING_WRITTEN, 0
        async for batch in _batches(_aiter(documents), batch_size):
            for pause in retry_pauses(attempts, max_pause_s):
                try:
                    done = await self.upsert(collection, batch, batch_size=len(batch))
                    break
                except TRANSIENT as error:
                    if pause is None:
                        raise IngestInterrupted(error, acknowledged) from error
                    await asyncio.sleep(pause)
                except RealmClientError as error:
                    raise IngestInterrupted(error, acknowledged) from error
            total = added(total, done)
            acknowledged += len(batch)
            if progress is not None:
                progress(len(batch))
        return total

    async def delete(self, collection: str, ids: Iterable[str]) -> tuple[int, list[str]]:
        with translated_errors():
            response = await self._retrieval().Delete(
                retriever_pb2.DeleteRequest(collection=collection, ids=list(ids)),
                timeout=self.options.timeout,
                metadata=self._metadata,
            )
        return int(response.deleted), list(response.not_found)

    async def compact(self, collection: str) -> int:
        """Folds recent writes into a new index generation; returns its number."""
        with translated_errors():
            response = await self._retrieval().Compact(
                retriever_pb2.CompactRequest(collection=collection),
                timeout=None,  # a build takes as long as the collection is large
                metadata=self._metadata,
            )
        return int(response.generation)

    async def get(self, collection: str, doc_id: str) -> Document:
        with translated_errors():
            response = await self._retrieval().GetDocument(
                retriever_pb2.GetDocumentRequest(collection=collection, id=doc_id),
                timeout=self.options.timeout,
                metadata=self._metadata,
            )
        d = response.document
        return Document(d.id, d.text, d.title, dict(d.metadata))

    async def search(
        self,
        collection: str,
        query: str,
        *,
        k: int = 10,
        mode: Mode = "hybrid",
        filter: Mapping[str, str] | None = None,
        fusion: Literal["rrf", "weighted"] | None = None,
        dense_weight: float | None = None,
    ) -> list[SearchHit]:
        request = search_request(
            collection,
            query,
            k=k,
            mode=mode,
            filter=filter,
            fusion=fusion,
            dense_weight=dense_weight,
        )
        with translated_errors():
            response = await self._retrieval().Search(
                request, timeout=self.options.timeout, metadata=self._metadata
            )
        return hits_from_proto(response)

    async def ask(self, question: str, collection: str, **options: Any) -> Answer:
        """``options`` are those of ``generate_request`` (k, mode, task, fields, …)."""
        request = generate_request(question, collection, **options)
        with translated_errors():
            response = await self._generation().Generate(
                request, timeout=self.options.generate_timeout, metadata=self._metadata
            )
        return answer_from_proto(response)

    async def ask_stream(
        self, question: str, collection: str, **options: Any
    ) -> AsyncIterator[str | Answer]:
        """Text pieces as generated, then the ``Answer``. Leaving the loop early cancels the
        call, which stops generation on the server."""
        call = self._generation().GenerateStream(
            generate_request(question, collection, **options),
            timeout=self.options.generate_timeout,
            metadata=self._metadata,
        )
        try:
            with translated_errors():
                async for message in call:
                    yield _stream_event(message)
        finally:
            call.cancel()


def _stream_event(message: generator_pb2.GenerateStreamResponse) -> str | Answer:
    return answer_from_proto(message.final) if message.HasField("final") else message.delta


def _upsert_message(
    collection: str, batch: list[Document], progress: Progress | None
) -> retriever_pb2.UpsertRequest:
    message = retriever_pb2.UpsertRequest(
        collection=collection, documents=[document_message(d) for d in batch]
    )
    if progress is not None:
        progress(len(batch))
    return message


async def _batches(documents: AsyncIterator[Document], size: int) -> AsyncIterator[list[Document]]:
    batch: list[Document] = []
    async for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _aiter(
    documents: Iterable[Document] | AsyncIterable[Document],
) -> AsyncIterator[Document]:
    if isinstance(documents, AsyncIterable):
        async for document in documents:
            yield document
    else:
        for document in documents:
            yield document


__all__ = ["AsyncRealmClient", "RealmClient", "Task"]
