"""``RealmClient`` and ``AsyncRealmClient``: one object for both services, sync or asyncio.

Collections, documents and search go to the retriever; ``ask`` and ``ask_stream`` go to the
generator. Either target may be omitted when only the other service is used. They are thin
facades over the four service clients (``.retriever``, ``.generator``), with the same arguments
and results.
"""

from collections.abc import AsyncGenerator, AsyncIterable, Callable, Generator, Iterable
from types import TracebackType
from typing import Unpack

from realm.channels import ConnectionOptions, Target
from realm.client.generator import AsyncGeneratorClient, GeneratorClient
from realm.client.retriever import AsyncRetrieverClient, RetrieverClient
from realm.client.types import (
    Answer,
    AskOptions,
    CollectionInfo,
    Document,
    ReindexStatus,
    SearchHit,
    SearchOptions,
    UpsertSummary,
)

Progress = Callable[[int], None]
_NO_RETRIEVER = "this client has no retriever target; pass retriever=HOST:PORT"
_NO_GENERATOR = "this client has no generator target; pass generator=HOST:PORT"


def _check_targets(retriever: Target | None, generator: Target | None) -> None:
    if retriever is None and generator is None:
        raise ValueError("give a retriever target, a generator target, or both")


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
        _check_targets(retriever, generator)
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
            raise ValueError(_NO_RETRIEVER)
        return self._retriever

    @property
    def generator(self) -> GeneratorClient:
        if self._generator is None:
            raise ValueError(_NO_GENERATOR)
        return self._generator

    def create_collection(
        self,
        name: str,
        *,
        language: str = "",
        embedding_model: str = "",
        chunk_words: int = 0,
        embedding_backend: str = "",
    ) -> CollectionInfo:
        return self.retriever.create_collection(
            name,
            language=language,
            embedding_model=embedding_model,
            chunk_words=chunk_words,
            embedding_backend=embedding_backend,
        )

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

    def reindex(
        self, collection: str, embedding_model: str, embedding_backend: str = ""
    ) -> ReindexStatus:
        """Starts re-encoding a collection with another model (``RetrieverClient.reindex``)."""
        return self.retriever.reindex(collection, embedding_model, embedding_backend)

    def search(
        self, collection: str, query: str, **options: Unpack[SearchOptions]
    ) -> list[SearchHit]:
        return self.retriever.search(collection, query, **options)

    def ask(self, question: str, collection: str, **options: Unpack[AskOptions]) -> Answer:
        return self.generator.ask(question, collection, **options)

    def ask_stream(
        self, question: str, collection: str, **options: Unpack[AskOptions]
    ) -> Generator[str | Answer, None, None]:
        """Text pieces as generated, then the ``Answer``; breaking out cancels generation."""
        return self.generator.ask_stream(question, collection, **options)


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
        _check_targets(retriever, generator)
        self._retriever = (
            None if retriever is None else AsyncRetrieverClient(retriever, options=options)
        )
        self._generator = (
            None if generator is None else AsyncGeneratorClient(generator, options=options)
        )

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
        for part in (self._retriever, self._generator):
            if part is not None:
                await part.close()

    @property
    def retriever(self) -> AsyncRetrieverClient:
        if self._retriever is None:
            raise ValueError(_NO_RETRIEVER)
        return self._retriever

    @property
    def generator(self) -> AsyncGeneratorClient:
        if self._generator is None:
            raise ValueError(_NO_GENERATOR)
        return self._generator

    async def create_collection(
        self,
        name: str,
        *,
        language: str = "",
        embedding_model: str = "",
        chunk_words: int = 0,
        embedding_backend: str = "",
    ) -> CollectionInfo:
        return await self.retriever.create_collection(
            name,
            language=language,
            embedding_model=embedding_model,
            chunk_words=chunk_words,
            embedding_backend=embedding_backend,
        )

    async def list_collections(self) -> list[CollectionInfo]:
        return await self.retriever.list_collections()

    async def delete_collection(self, name: str) -> int:
        return await self.retriever.delete_collection(name)

    async def upsert(
        self,
        collection: str,
        documents: Iterable[Document] | AsyncIterable[Document],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        return await self.retriever.upsert(
            collection, documents, batch_size=batch_size, progress=progress
        )

    async def ingest(
        self,
        collection: str,
        documents: Iterable[Document] | AsyncIterable[Document],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> UpsertSummary:
        return await self.retriever.ingest(
            collection, documents, batch_size=batch_size, progress=progress
        )

    async def delete(self, collection: str, ids: Iterable[str]) -> tuple[int, list[str]]:
        return await self.retriever.delete(collection, ids)

    async def get(self, collection: str, doc_id: str) -> Document:
        return await self.retriever.get(collection, doc_id)

    async def compact(self, collection: str) -> int:
        return await self.retriever.compact(collection)

    async def reindex(
        self, collection: str, embedding_model: str, embedding_backend: str = ""
    ) -> ReindexStatus:
        return await self.retriever.reindex(collection, embedding_model, embedding_backend)

    async def search(
        self, collection: str, query: str, **options: Unpack[SearchOptions]
    ) -> list[SearchHit]:
        return await self.retriever.search(collection, query, **options)

    async def ask(self, question: str, collection: str, **options: Unpack[AskOptions]) -> Answer:
        return await self.generator.ask(question, collection, **options)

    def ask_stream(
        self, question: str, collection: str, **options: Unpack[AskOptions]
    ) -> AsyncGenerator[str | Answer, None]:
        return self.generator.ask_stream(question, collection, **options)
