"""One description per RPC: how its request is built from typed arguments, which timeout bounds
it, and how its response becomes a result. The sync and asyncio transports run these
descriptions; neither knows anything about a particular RPC."""

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar, Unpack

from realm.client.types import (
    Answer,
    AskOptions,
    CitationSpan,
    CollectionInfo,
    CollectionStats,
    Consistency,
    Document,
    ExtractedField,
    GeneratorInfo,
    ReindexStatus,
    SearchHit,
    SearchOptions,
    Source,
    UpsertSummary,
)
from realm.v1 import common_pb2, generator_pb2, retriever_pb2

Arguments = ParamSpec("Arguments")
Result = TypeVar("Result")
# "call": the client's per-call timeout; "generate": its (longer) answer timeout; "unbounded":
# none, for calls that take as long as the data is large (a compaction).
TimeoutKind = Literal["call", "generate", "unbounded"]


@dataclass(frozen=True, slots=True)
class Rpc(Generic[Arguments, Result]):
    """A unary RPC as the clients call it."""

    method: str
    timeout: TimeoutKind
    build: Callable[Arguments, Any]
    parse: Callable[[Any], Result]


_MODES: dict[str, common_pb2.SearchMode.ValueType] = {
    "bm25": common_pb2.SEARCH_MODE_BM25,
    "dense": common_pb2.SEARCH_MODE_DENSE,
    "hybrid": common_pb2.SEARCH_MODE_HYBRID,
}
_FUSIONS: dict[str, common_pb2.FusionMethod.ValueType] = {
    "rrf": common_pb2.FUSION_METHOD_RRF,
    "weighted": common_pb2.FUSION_METHOD_WEIGHTED,
}
_TASKS: dict[str, generator_pb2.Task.ValueType] = {
    "answer": generator_pb2.TASK_ANSWER,
    "summarize": generator_pb2.TASK_SUMMARIZE,
    "extract": generator_pb2.TASK_EXTRACT,
}
_GROUNDING: dict[str, generator_pb2.Grounding.ValueType] = {
    "strict": generator_pb2.GROUNDING_STRICT,
    "cite": generator_pb2.GROUNDING_CITE,
    "free": generator_pb2.GROUNDING_FREE,
}
_STYLES: dict[str, generator_pb2.AnswerStyle.ValueType] = {
    "short": generator_pb2.ANSWER_STYLE_SHORT,
    "sentence": generator_pb2.ANSWER_STYLE_SENTENCE,
}
_CONSISTENCY: dict[str, retriever_pb2.Consistency.ValueType] = {
    "eventual": retriever_pb2.CONSISTENCY_EVENTUAL,
    "session": retriever_pb2.CONSISTENCY_SESSION,
    "strong": retriever_pb2.CONSISTENCY_STRONG,
}
_FINISH = {
    generator_pb2.FINISH_REASON_STOP: "stop",
    generator_pb2.FINISH_REASON_LENGTH: "length",
    generator_pb2.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
}
_ORIGINS = {
    generator_pb2.CITATION_ORIGIN_MODEL: "model",
    generator_pb2.CITATION_ORIGIN_ATTRIBUTED: "attributed",
    generator_pb2.CITATION_ORIGIN_SPAN: "span",
}


def _choice(kind: str, value: str, table: Mapping[str, Any]) -> Any:
    if value not in table:
        raise ValueError(f"{kind}={value!r} is unknown; use {', '.join(table)}")
    return table[value]


# --- retriever ---------------------------------------------------------------------------------


def create_collection_request(
    name: str,
    *,
    language: str = "",
    embedding_model: str = "",
    chunk_words: int = 0,
    embedding_backend: str = "",
    shards: int = 0,
) -> retriever_pb2.CreateCollectionRequest:
    """Unset (empty, 0) settings take the server's defaults; ``embedding_backend`` is "onnx"
    or "torch"."""
    config = retriever_pb2.CollectionConfig(
        language=language,
        embedding_model=embedding_model,
        chunk_words=chunk_words,
        embedding_backend=embedding_backend,
        shards=shards,
    )
    return retriever_pb2.CreateCollectionRequest(name=name, config=config)


def search_request(
    collection: str, query: str, **options: Unpack[SearchOptions]
) -> retriever_pb2.SearchRequest:
    request = retriever_pb2.SearchRequest(
        collection=collection,
        query=query,
        k=options.get("k", 10),
        mode=_choice("mode", options.get("mode", "hybrid"), _MODES),
        filter=dict(options.get("filter") or {}),
        min_sequence=options.get("min_sequence", 0),
        consistency=_choice("consistency", options.get("consistency", "session"), _CONSISTENCY),
        min_shard_sequences=list(options.get("min_shard_sequences", ())),
    )
    fusion = options.get("fusion")
    if fusion is not None:
        request.fusion = _choice("fusion", fusion, _FUSIONS)
    dense_weight = options.get("dense_weight")
    if dense_weight is not None:
        request.dense_weight = dense_weight
    return request


def batch_search_request(
    collection: str, queries: Sequence[str], **options: Unpack[SearchOptions]
) -> retriever_pb2.BatchSearchRequest:
    return retriever_pb2.BatchSearchRequest(
        requests=[search_request(collection, query, **options) for query in queries]
    )


def upsert_messages(
    collection: str, batches: Iterable[Sequence[Document]]
) -> Iterable[retriever_pb2.UpsertRequest]:
    for batch in batches:
        yield upsert_message(collection, batch)


def upsert_message(collection: str, batch: Sequence[Document]) -> retriever_pb2.UpsertRequest:
    documents = [
        common_pb2.Document(id=d.id, text=d.text, title=d.title, metadata=dict(d.metadata))
        for d in batch
    ]
    return retriever_pb2.UpsertRequest(collection=collection, documents=documents)


def hits(response: retriever_pb2.SearchResponse) -> list[SearchHit]:
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


def collection_info(info: retriever_pb2.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(
        name=info.name,
        documents=int(info.documents),
        passages=int(info.passages),
        language=info.config.language,
        embedding_model=info.config.embedding_model,
        embedding_backend=info.config.embedding_backend,
        shards=int(info.config.shards) or 1,
        missing_shards=tuple(int(shard) for shard in info.missing_shards),
    )


def collection_stats(stats: retriever_pb2.CollectionStats) -> CollectionStats:
    return CollectionStats(
        name=stats.name,
        documents=int(stats.documents),
        passages=int(stats.passages),
        generation=int(stats.generation),
        vocabulary=int(stats.vocabulary),
        index_bytes=int(stats.index_bytes),
        tail_passages=int(stats.tail_passages),
        tombstones=int(stats.tombstones),
        wal_bytes=int(stats.wal_bytes),
        last_sequence=int(stats.applied_sequence or stats.last_sequence),
        log_sequence=int(stats.log_sequence),
        lag=int(stats.lag),
        state_digest=stats.state_digest,
        embedding_model=stats.embedding_model,
        embedding_backend=stats.embedding_backend,
        encoder_fingerprint=stats.encoder_fingerprint,
        reindex=reindex_status(stats.reindex) if stats.HasField("reindex") else None,
        shard=int(stats.shard),
        shards=int(stats.shards),
    )


def reindex_status(status: retriever_pb2.ReindexStatus) -> ReindexStatus:
    return ReindexStatus(
        embedding_model=status.embedding_model,
        embedding_backend=status.embedding_backend,
        passages_done=int(status.passages_done),
        passages_total=int(status.passages_total),
        running=status.running,
        error=status.error,
    )


def upsert_summary(response: retriever_pb2.UpsertResponse) -> UpsertSummary:
    return UpsertSummary(
        int(response.inserted),
        int(response.replaced),
        int(response.passages),
        int(response.generation),
        int(response.sequence),
        tuple(int(s) for s in response.shard_sequences),
    )


CREATE_COLLECTION = Rpc(
    "CreateCollection",
    "call",
    create_collection_request,
    lambda r: collection_info(r.collection),
)
LIST_COLLECTIONS = Rpc(
    "ListCollections",
    "call",
    retriever_pb2.ListCollectionsRequest,
    lambda r: [collection_info(c) for c in r.collections],
)


def _delete_collection_request(name: str) -> retriever_pb2.DeleteCollectionRequest:
    return retriever_pb2.DeleteCollectionRequest(name=name)


def _delete_request(collection: str, ids: Iterable[str]) -> retriever_pb2.DeleteRequest:
    return retriever_pb2.DeleteRequest(collection=collection, ids=list(ids))


def _get_request(
    collection: str,
    doc_id: str,
    consistency: Consistency = "session",
    min_sequence: int = 0,
    min_shard_sequences: Sequence[int] = (),
) -> retriever_pb2.GetDocumentRequest:
    return retriever_pb2.GetDocumentRequest(
        collection=collection,
        id=doc_id,
        consistency=_choice("consistency", consistency, _CONSISTENCY),
        min_sequence=min_sequence,
        min_shard_sequences=list(min_shard_sequences),
    )


def _stats_request(collection: str = "", digest: bool = False) -> retriever_pb2.StatsRequest:
    return retriever_pb2.StatsRequest(collection=collection, state_digest=digest)


def _compact_request(collection: str) -> retriever_pb2.CompactRequest:
    return retriever_pb2.CompactRequest(collection=collection)


def _reindex_request(
    collection: str, embedding_model: str, embedding_backend: str = ""
) -> retriever_pb2.ReindexRequest:
    return retriever_pb2.ReindexRequest(
        collection=collection,
        embedding_model=embedding_model,
        embedding_backend=embedding_backend,
    )


def _document(response: retriever_pb2.GetDocumentResponse) -> Document:
    d = response.document
    return Document(d.id, d.text, d.title, dict(d.metadata))


DELETE_COLLECTION = Rpc(
    "DeleteCollection", "call", _delete_collection_request, lambda r: int(r.documents_deleted)
)
# (deleted, ids not found, sequence, shard sequences): the clients keep the sequences for
# their session.
DELETE = Rpc(
    "Delete",
    "call",
    _delete_request,
    lambda r: (
        int(r.deleted),
        list(r.not_found),
        int(r.sequence),
        tuple(int(s) for s in r.shard_sequences),
    ),
)
GET_DOCUMENT = Rpc("GetDocument", "call", _get_request, _document)
SEARCH = Rpc("Search", "call", search_request, hits)
BATCH_SEARCH = Rpc(
    "BatchSearch", "call", batch_search_request, lambda r: [hits(one) for one in r.responses]
)
STATS = Rpc("Stats", "call", _stats_request, lambda r: [collection_stats(c) for c in r.collections])
# A build takes as long as the collection is large.
COMPACT = Rpc("Compact", "unbounded", _compact_request, lambda r: int(r.generation))
# Returns once the reindex has started (loading its model may take a while); Stats follows it.
REINDEX = Rpc("Reindex", "unbounded", _reindex_request, lambda r: reindex_status(r.status))


# --- generator ---------------------------------------------------------------------------------


def generate_request(
    question: str, collection: str, **options: Unpack[AskOptions]
) -> generator_pb2.GenerateRequest:
    parameters = generator_pb2.GenerationParameters(stop=list(options.get("stop", ())))
    for name in ("max_new_tokens", "temperature", "top_p", "seed"):
        value = options.get(name)
        if value is not None:
            setattr(parameters, name, value)
    return generator_pb2.GenerateRequest(
        question=question,
        collection=collection,
        k=options.get("k", 0),
        mode=_choice("mode", options.get("mode", "hybrid"), _MODES),
        task=_choice("task", options.get("task", "answer"), _TASKS),
        fields=list(options.get("fields", ())),
        parameters=parameters,
        allow_no_context=options.get("allow_no_context", False),
        filter=dict(options.get("filter") or {}),
        grounding=_choice("grounding", options.get("grounding", "strict"), _GROUNDING),
        style=_choice("style", options.get("style", "short"), _STYLES),
    )


def answer(response: generator_pb2.GenerateResponse) -> Answer:
    return Answer(
        text=response.answer,
        sources=[
            Source(
                citation=s.citation,
                doc_id=s.passage.doc_id,
                passage_id=s.passage.passage_id,
                text=s.passage.text,
                start=s.passage.start,
                end=s.passage.end,
                score=s.score,
                title=s.title,
                cited=s.cited,
            )
            for s in response.sources
        ],
        citations=[
            CitationSpan(
                c.citation,
                c.start,
                c.end,
                _ORIGINS.get(c.origin, "unspecified"),
                c.source_start,
                c.source_end,
            )
            for c in response.citations
        ],
        finish_reason=_FINISH.get(response.finish_reason, "unspecified"),
        context_used=response.context_used,
        no_context_reason=response.no_context_reason,
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        timings_ms={
            "retrieval": response.timings.retrieval_ms,
            "time_to_first_token": response.timings.time_to_first_token_ms,
            "generation": response.timings.generation_ms,
            "total": response.timings.total_ms,
        },
        model=response.model,
        fields=[ExtractedField(f.name, f.value, f.found, f.citation) for f in response.fields],
        extracted=json.loads(response.extracted_json) if response.extracted_json else {},
        answered=response.answered,
    )


def stream_event(message: generator_pb2.GenerateStreamResponse) -> str | Answer:
    """A piece of text as it was generated, or the final answer."""
    return answer(message.final) if message.HasField("final") else message.delta


def generator_info(r: generator_pb2.InfoResponse) -> GeneratorInfo:
    return GeneratorInfo(
        model=r.model,
        architecture=r.architecture,
        device=r.device,
        context_tokens=r.context_tokens,
        max_new_tokens=r.max_new_tokens,
        max_k=r.max_k,
        max_question_chars=r.max_question_chars,
        max_batch_size=r.max_batch_size,
        max_pending_requests=r.max_pending_requests,
        retriever_target=r.retriever_target,
        requests_in_progress=r.requests_in_progress,
        sequences_decoding=r.sequences_decoding,
    )


GENERATE = Rpc("Generate", "generate", generate_request, answer)
INFO = Rpc("Info", "call", generator_pb2.InfoRequest, generator_info)
