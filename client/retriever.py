"""Synchronous client for the retriever service.

Connection options (TLS, token, retries of UNAVAILABLE, keepalive) come from
``realm.channels.ConnectionOptions``, shared with every other client.
"""

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import TracebackType
from typing import Literal

from realm.channels import RETRIEVER_SERVICE, ConnectionOptions, Target, sync_channel
from realm.client.errors import (
    DeadlineExceeded,
    IngestInterrupted,
    RealmClientError,
    ResourceExhausted,
    Unavailable,
    translated_errors,
)
from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc

Mode = Literal["bm25", "dense", "hybrid"]
SEARCH_MODES: dict[str, common_pb2.SearchMode.ValueType] = {
    "bm25": common_pb2.SEARCH_MODE_BM25,
    "dense": common_pb2.SEARCH_MODE_DENSE,
    "hybrid": common_pb2.SEARCH_MODE_HYBRID,
}
_FUSIONS: dict[str, common_pb2.FusionMethod.ValueType] = {
    "rrf": common_pb2.FUSION_METHOD_RRF,
    "weighted": common_pb2.FUSION_METHOD_WEIGHTED,
}
DEFAULT_TARGET = "localhost:50051"
# What an ingest sends again after a pause: the server was away, restarting or too busy.
TRANSIENT = (Unavailable, DeadlineExceeded, ResourceExhausted)


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SearchHit:
    doc_id: str
    passage_id: str
    score: float
    text: str
    start: int
    end: int
    title: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    documents: int
    passages: int
    language: str
    embedding_model: str


@dataclass(frozen=True, slots=True)
class UpsertSummary:
    inserted: int
    replaced: int
    passages: int
    generation: int
    # Write-ahead-log sequence of the write; a search reporting this sequence or later sees it.
    sequence: int


class RetrieverClient:
    """Talks to one retriever target (``host:port``, or ``dns:///name`` for several replicas)."""

    def __init__(
        self,
        target: Target = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
    ) -> None:
        """``options`` holds TLS, token, retries and keepalive; ``timeout`` overrides its
        per-call timeout (the common case, hence its own argument)."""
        options = options or ConnectionOptions()
        self.timeout = options.timeout if timeout is None else timeout
        self._metadata = options.metadata
        self._channel = sync_channel(target, [RETRIEVER_SERVICE], options)
        self._stub = retriever_pb2_grpc.RetrieverServiceStub(self._channel)

    def __enter__(self) -> "RetrieverClient":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def create_collection(
        self, name: str, *, language: str = "", embedding_model: str = "", chunk_words: int = 0
    ) -> CollectionInfo:
        request = retriever_pb2.CreateCollectionRequest(
            name=name,
            config=retriever_pb2.CollectionConfig(
                language=language, embedding_model=embedding_model, chunk_words=chunk_words
            ),
        )
        with translated_errors():
            response = self._stub.CreateCollection(
                request, timeout=self.timeout, metadata=self._metadata
            )
        return collection_info(response.collection)

    def list_collections(self) -> list[CollectionInfo]:
        with translated_errors():
            response = self._stub.ListCollections(
                retriever_pb2.ListCollectionsRequest(),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        return [collection_info(c) for c in response.collections]

    def delete_collection(self, name: str) -> int:
        with translated_errors():
            response = self._stub.DeleteCollection(
                retriever_pb2.DeleteCollectionRequest(name=name),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        return int(response.documents_deleted)

    def upsert(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = 256,
        progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> UpsertSummary:
        """Streams ``documents`` in batches; ``progress`` gets the count of each batch sent.

        The server applies the whole stream at once when it ends (and encodes new passages
        then), so the default deadline is none: large corpora take minutes on a CPU.
        """

        def batches() -> Iterator[retriever_pb2.UpsertRequest]:
            iterator = iter(documents)
            while batch := list(islice(iterator, batch_size)):
                yield retriever_pb2.UpsertRequest(
                    collection=collection, documents=[document_message(d) for d in batch]
                )
                if progress is not None:
                    progress(len(batch))

        with translated_errors():
            response = self._stub.Upsert(batches(), timeout=timeout, metadata=self._metadata)
        return upsert_summary(response)

    def ingest(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = 256,
        attempts: int = 8,
        max_pause_s: float = 10.0,
        progress: Callable[[int], None] | None = None,
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
        total, acknowledged = NOTHING_WRITTEN, 0
        iterator = iter(documents)
        while batch := list(islice(iterator, batch_size)):
            for pause in retry_pauses(attempts, max_pause_s):
                try:
                    done = self.upsert(collection, batch, batch_size=len(batch))
                    break
                except TRANSIENT as error:
                    if pause is None:
                        raise IngestInterrupted(error, acknowledged) from error
                    time.sleep(pause)
                except RealmClientError as error:
                    raise IngestInterrupted(error, acknowledged) from error
            total = added(total, done)
            acknowledged += len(batch)
            if progress is not None:
                progress(len(batch))
        return total

    def delete(self, collection: str, ids: Iterable[str]) -> tuple[int, list[str]]:
        """Deletes documents; returns ``(deleted, ids_not_found)``."""
        with translated_errors():
            response = self._stub.Delete(
                retriever_pb2.DeleteRequest(collection=collection, ids=list(ids)),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        return int(response.deleted), list(response.not_found)

    def get(self, collection: str, doc_id: str) -> Document:
        with translated_errors():
            response = self._stub.GetDocument(
                retriever_pb2.GetDocumentRequest(collection=collection, id=doc_id),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        d = response.document
        return Document(d.id, d.text, d.title, dict(d.metadata))

    def search(
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
            response = self._stub.Search(request, timeout=self.timeout, metadata=self._metadata)
        return hits_from_proto(response)

    def batch_search(self, requests: list[retriever_pb2.SearchRequest]) -> list[list[SearchHit]]:
        with translated_errors():
            response = self._stub.BatchSearch(
                retriever_pb2.BatchSearchRequest(requests=requests),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        return [hits_from_proto(r) for r in response.responses]

    def stats(self, collection: str = "") -> list[retriever_pb2.CollectionStats]:
        with translated_errors():
            response = self._stub.Stats(
                retriever_pb2.StatsRequest(collection=collection),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        return list(response.collections)

    def compact(self, collection: str) -> int:
        """Folds the collection's recent writes into a new generation; returns its number."""
        with translated_errors():
            response = self._stub.Compact(
                retriever_pb2.CompactRequest(collection=collection),
                timeout=None,  # a build takes as long as the collection is large
                metadata=self._metadata,
            )
        return int(response.generation)


def search_request(
    collection: str,
    query: str,
    *,
    k: int = 10,
    mode: Mode = "hybrid",
    filter: Mapping[str, str] | None = None,
    fusion: Literal["rrf", "weighted"] | None = None,
    dense_weight: float | None = None,
) -> retriever_pb2.SearchRequest:
    """Builds a search message (also what ``batch_search`` takes)."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode={mode!r} is unknown; use bm25, dense or hybrid")
    request = retriever_pb2.SearchRequest(
        collection=collection, query=query, k=k, mode=SEARCH_MODES[mode], filter=dict(filter or {})
    )
    if fusion is not None:
        request.fusion = _FUSIONS[fusion]
    if dense_weight is not None:
        request.dense_weight = dense_weight
    return request


def hits_from_proto(response: retriever_pb2.SearchResponse) -> list[SearchHit]:
    return [
        SearchHit(
            doc_id=h.passage.doc_id,
            passage_id=h.passage.passage_id,
            score=h.score,
            text=h.passage.text,
            start=h.passage.start,
            end=h.passage.end,
            title=h.title,
            metadata=dict(h.metadata),
        )
        for h in response.hits
    ]


def document_message(document: Document) -> common_pb2.Document:
    return common_pb2.Document(
        id=document.id, text=document.text, title=document.title, metadata=dict(document.metadata)
    )


NOTHING_WRITTEN = UpsertSummary(0, 0, 0, 0, 0)


def added(total: UpsertSummary, done: UpsertSummary) -> UpsertSummary:
    """Two writes' summaries as one: counts add up, the later write's generation and sequence."""
    return UpsertSummary(
        total.inserted + done.inserted,
        total.replaced + done.replaced,
        total.passages + done.passages,
        done.generation,
        done.sequence,
    )


def retry_pauses(attempts: int, max_pause_s: float) -> Iterator[float | None]:
    """The pause after each failed attempt of an ingest batch, doubling from half a second to
    ``max_pause_s``; None after the last attempt, which gives up."""
    if attempts < 1:
        raise ValueError(f"attempts={attempts} must be >= 1")
    pause = min(0.5, max_pause_s)
    for _ in range(attempts - 1):
        yield pause
        pause = min(pause * 2, max_pause_s)
    yield None


def upsert_summary(response: retriever_pb2.UpsertResponse) -> UpsertSummary:
    return UpsertSummary(
        int(response.inserted),
        int(response.replaced),
        int(response.passages),
        int(response.generation),
        int(response.sequence),
    )


def collection_info(info: retriever_pb2.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(
        name=info.name,
        documents=int(info.documents),
        passages=int(info.passages),
        language=info.config.language,
        embedding_model=info.config.embedding_model,
    )
