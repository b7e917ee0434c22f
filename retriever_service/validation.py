"""The retriever's one place for request validation, with messages that name the field, the
limit and the fix; request messages become checked domain values here.

Runs before any state changes, so a refused request leaves the collection exactly as it was.
"""

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np

from realm.errors import InvalidArgument, shown
from realm.names import collection_name
from realm.retriever import languages
from realm.retriever.analyzer import LANGUAGES, Language
from realm.retriever.bm25 import BM25Params, CorpusStatistics
from realm.retriever.chunker import ChunkerConfig
from realm.retriever.dense import AnnoyParams
from realm.retriever.embedder import BACKENDS, Backend, EncoderSpec
from realm.retriever.fusion import FusionMethod, FusionParams
from realm.retriever.search import Plan, SearchMode, SearchQuery
from realm.retriever.settings import CollectionSettings, Limits
from realm.retriever.store import StoredDocument
from realm.retriever.topk import FloatArray, IntArray
from realm.v1 import common_pb2, retriever_pb2, shard_pb2

# The wire's enums in domain terms (unset: the server's default); shard_messages inverts them.
SEARCH_MODES: dict[common_pb2.SearchMode.ValueType, SearchMode] = {
    common_pb2.SEARCH_MODE_UNSPECIFIED: "hybrid",
    common_pb2.SEARCH_MODE_BM25: "bm25",
    common_pb2.SEARCH_MODE_DENSE: "dense",
    common_pb2.SEARCH_MODE_HYBRID: "hybrid",
}
FUSION_METHODS: dict[common_pb2.FusionMethod.ValueType, FusionMethod | None] = {
    common_pb2.FUSION_METHOD_UNSPECIFIED: None,
    common_pb2.FUSION_METHOD_RRF: "rrf",
    common_pb2.FUSION_METHOD_WEIGHTED: "weighted",
}

__all__ = [
    "UpsertStream",
    "batch_size",
    "collection_name",
    "collection_settings",
    "document_id",
    "document_ids",
    "documents",
    "metadata",
    "query_text",
    "result_count",
    "search_filter",
    "search_query",
    "shard_hydration",
    "shard_plan",
    "shard_statistics",
    "shard_terms",
    "shard_vector",
]


def document_id(doc_id: str, limits: Limits, field: str = "id") -> str:
    """An id naming an existing document (GetDocument, Delete)."""
    if not doc_id:
        raise InvalidArgument(f"{field} is empty; name the document")
    if len(doc_id.encode()) > limits.max_id_bytes:
        raise InvalidArgument(
            f"{field} has {len(doc_id.encode()):,} bytes, above max_id_bytes={limits.max_id_bytes}"
            "; no document has such an id"
        )
    return doc_id


def document_ids(ids: Sequence[str], limits: Limits, field: str = "ids") -> list[str]:
    """The distinct ids of a Delete, in order; bounded so one call cannot hold the write lock
    for long."""
    if not ids:
        raise InvalidArgument(f"{field} is empty; name at least one document to delete")
    if len(ids) > limits.max_ids_per_delete:
        raise InvalidArgument(
            f"{field} has {len(ids):,} ids, above max_ids_per_delete="
            f"{limits.max_ids_per_delete}; split the delete into several calls"
        )
    for position, doc_id in enumerate(ids):
        document_id(doc_id, limits, f"{field}[{position}]")
    return list(dict.fromkeys(ids))


def query_text(text: str, limits: Limits, field: str = "query") -> str:
    if not text.strip():
        raise InvalidArgument(f"{field} is empty; send the words to search for")
    if len(text) > limits.max_query_chars:
        raise InvalidArgument(
            f"{field} has {len(text)} characters, above max_query_chars={limits.max_query_chars}; "
            "shorten the query or raise --max-query-chars"
        )
    return text


def result_count(k: int, limits: Limits, field: str = "k") -> int:
    """``k`` = 0 means the default; negative values cannot come over the wire (uint32)."""
    if k == 0:
        return limits.default_k
    if k < 0 or k > limits.max_k:
        raise InvalidArgument(
            f"{field}={k} is outside 1..max_k={limits.max_k}; lower k or raise --max-k"
        )
    return k


def documents(batch: Sequence[StoredDocument], limits: Limits, field: str = "documents") -> None:
    """Checks one batch: non-empty ids and text free of NUL, sizes, ids unique in the batch."""
    if len(batch) > limits.max_documents_per_message:
        raise InvalidArgument(
            f"{field} has {len(batch)} documents, above max_documents_per_message="
            f"{limits.max_documents_per_message}; split the batch into smaller messages"
        )
    seen: dict[str, int] = {}
    for position, document in enumerate(batch):
        where = f"{field}[{position}]"
        if not document.doc_id.strip():
            raise InvalidArgument(f"{where}.id is empty; give every document a unique id")
        if len(document.doc_id.encode()) > limits.max_id_bytes:
            raise InvalidArgument(
                f"{where}.id is longer than max_id_bytes={limits.max_id_bytes}; use a shorter id"
            )
        if document.doc_id in seen:
            raise InvalidArgument(
                f"{where}.id={shown(document.doc_id)} repeats {field}[{seen[document.doc_id]}].id; "
                "ids must be unique within a batch (send the final version once)"
            )
        seen[document.doc_id] = position
        for name, value in (
            ("id", document.doc_id),
            ("text", document.text),
            ("title", document.title),
        ):
            offset = value.find("\x00")
            if offset >= 0:
                # SQLite's string functions stop at NUL: the hit would lose everything after it.
                raise InvalidArgument(
                    f"{where}.{name} contains a NUL character at offset {offset} "
                    f"(id={shown(document.doc_id)}); remove it"
                )
        if len(document.title.encode()) > limits.max_title_bytes:
            raise InvalidArgument(
                f"{where}.title has {len(document.title.encode()):,} bytes "
                f"(id={shown(document.doc_id)}), above max_title_bytes={limits.max_title_bytes}"
                "; shorten it (the text is the place for long content)"
            )
        if not document.text.strip():
            raise InvalidArgument(
                f"{where}.text is empty (id={shown(document.doc_id)}); every document needs text"
            )
        if len(document.text) > limits.max_document_chars:
            raise InvalidArgument(
                f"{where}.text has {len(document.text)} characters "
                f"(id={shown(document.doc_id)}), above max_document_chars="
                f"{limits.max_document_chars}; split the document or raise --max-document-chars"
            )
        metadata(document.metadata, limits, f"{where}.metadata")


def metadata(entries: Mapping[str, str], limits: Limits, field: str) -> None:
    if len(entries) > limits.max_metadata_entries:
        raise InvalidArgument(
            f"{field} has {len(entries)} entries, above max_metadata_entries="
            f"{limits.max_metadata_entries}; keep only the fields you filter or show"
        )
    for key, value in entries.items():
        if not key:
            raise InvalidArgument(f"{field} has an empty key; name every metadata field")
        if len(key.encode()) > limits.max_metadata_key_bytes:
            raise InvalidArgument(
                f"{field} key {shown(key)} is longer than max_metadata_key_bytes="
                f"{limits.max_metadata_key_bytes}"
            )
        if len(value.encode()) > limits.max_metadata_value_bytes:
            raise InvalidArgument(
                f"{field}[{shown(key)}] has {len(value.encode()):,} bytes, above "
                f"max_metadata_value_bytes={limits.max_metadata_value_bytes}; metadata is for "
                "short fields to filter and show"
            )


def search_filter(entries: Mapping[str, str], limits: Limits, field: str) -> None:
    """A search's metadata filter: few entries, each as bounded as stored metadata."""
    if len(entries) > limits.max_filter_entries:
        raise InvalidArgument(
            f"{field} has {len(entries):,} entries, above max_filter_entries="
            f"{limits.max_filter_entries}"
        )
    metadata(entries, limits, field)


def _language(value: str) -> Language:
    if value not in LANGUAGES:
        raise ValueError(f"language={shown(value)} is not supported; use one of {LANGUAGES}")
    return cast(Language, value)


def collection_settings(
    config: retriever_pb2.CollectionConfig, default_backend: Backend
) -> CollectionSettings:
    """Fills unset fields with defaults; nonsense values become INVALID_ARGUMENT."""
    defaults = CollectionSettings()
    try:
        language = _language(config.language or defaults.language)
    except ValueError as error:
        raise InvalidArgument(f"config.{error}") from error
    model = config.embedding_model or languages.default_model(language)
    backend = config.embedding_backend or languages.default_backend(model, default_backend)
    if backend not in BACKENDS:
        raise InvalidArgument(
            f"config.embedding_backend={shown(backend)} is unknown; use one of {BACKENDS}"
        )
    try:
        chunker = ChunkerConfig(
            words=config.chunk_words or defaults.chunker.words,
            overlap=config.chunk_overlap
            if config.HasField("chunk_overlap")
            else min(defaults.chunker.overlap, (config.chunk_words or defaults.chunker.words) // 4),
        )
        return CollectionSettings(
            language=language,
            embedding_model=model,
            embedding_backend=backend,
            chunker=chunker,
            bm25=BM25Params(
                k1=config.k1 if config.HasField("k1") else defaults.bm25.k1,
                b=config.b if config.HasField("b") else defaults.bm25.b,
            ),
            annoy=AnnoyParams(n_trees=config.annoy_trees or defaults.annoy.n_trees),
            shards=config.shards or 1,
        )
    except ValueError as error:
        raise InvalidArgument(f"config: {error}") from error


def reindex_encoder(request: retriever_pb2.ReindexRequest, default_backend: Backend) -> EncoderSpec:
    """The model a Reindex asks for, its backend defaulted as CreateCollection does."""
    model = request.embedding_model.strip()
    if not model:
        raise InvalidArgument(
            "embedding_model is empty; name the model to re-encode the collection with"
        )
    backend = request.embedding_backend or languages.default_backend(model, default_backend)
    if backend not in BACKENDS:
        raise InvalidArgument(
            f"embedding_backend={shown(backend)} is unknown; use one of {BACKENDS}"
        )
    return EncoderSpec(model, backend)


def search_query(request: retriever_pb2.SearchRequest, limits: Limits, field: str) -> SearchQuery:
    """Validates everything in a search request but the collection's name."""
    mode = SEARCH_MODES.get(request.mode)
    if mode is None:
        raise InvalidArgument(f"{field}mode={request.mode} is unknown; use BM25, DENSE or HYBRID")
    if request.fusion not in FUSION_METHODS:
        raise InvalidArgument(f"{field}fusion={request.fusion} is unknown; use RRF or WEIGHTED")
    fusion_method = FUSION_METHODS[request.fusion]
    dense_weight = request.dense_weight if request.HasField("dense_weight") else None
    if dense_weight is not None and not 0.0 <= dense_weight <= 1.0:
        raise InvalidArgument(f"{field}dense_weight={dense_weight} must be in [0, 1]")
    search_filter(request.filter, limits, f"{field}filter")
    return SearchQuery(
        text=query_text(request.query, limits, f"{field}query"),
        k=result_count(request.k, limits, f"{field}k"),
        mode=mode,
        filter=tuple(sorted(request.filter.items())),
        fusion_method=fusion_method,
        dense_weight=dense_weight,
    )


def shard_terms(terms: Sequence[str], limits: Limits) -> list[str]:
    """A shard phase's analysed query terms: as many as a longest query could have."""
    if len(terms) > limits.max_query_chars:
        raise InvalidArgument(
            f"terms has {len(terms):,} entries, above max_query_chars={limits.max_query_chars} "
            "(a query of that many characters has fewer terms)"
        )
    if any(not term for term in terms):
        raise InvalidArgument("terms holds an empty term; send the analyzer's tokens")
    return list(terms)


def shard_plan(request: shard_pb2.ShardRankRequest, limits: Limits, fusion: FusionParams) -> Plan:
    """A shard's part of a search, as the coordinator resolved it. Only the mode, depth,
    fusion method and filter matter to a shard; k and the weights are the merge's."""
    mode = SEARCH_MODES.get(request.mode)
    if request.mode == common_pb2.SEARCH_MODE_UNSPECIFIED or mode is None:
        raise InvalidArgument(
            f"mode={request.mode} is not a resolved mode; send BM25, DENSE or HYBRID"
        )
    if request.fusion not in FUSION_METHODS:
        raise InvalidArgument(f"fusion={request.fusion} is unknown; use RRF or WEIGHTED")
    deepest = max(limits.max_k, fusion.depth)
    if not 1 <= request.depth <= deepest:
        raise InvalidArgument(
            f"depth={request.depth} is outside 1..{deepest} (max_k, or the collection's "
            "fusion depth if larger)"
        )
    search_filter(request.filter, limits, "filter")
    method = FUSION_METHODS[request.fusion] or fusion.method
    return Plan(
        mode,
        request.depth,
        request.depth,
        method,
        fusion.dense_weight,
        fusion.rrf_k,
        tuple(sorted(request.filter.items())),
    )


def shard_statistics(message: shard_pb2.TermStatistics, limits: Limits) -> CorpusStatistics:
    """A collection's summed statistics as the coordinator sends them: consistent counts (no
    term in more passages than there are), as many terms as a longest query could have."""
    frequencies = dict(message.document_frequencies)
    if len(frequencies) > limits.max_query_chars:
        raise InvalidArgument(
            f"statistics.document_frequencies has {len(frequencies):,} terms, above "
            f"max_query_chars={limits.max_query_chars}"
        )
    crowded = [term for term, count in frequencies.items() if count > message.passages]
    if crowded:
        raise InvalidArgument(
            f"statistics.document_frequencies counts {shown(crowded[0])} in more passages than "
            f"statistics.passages={message.passages}; send the shards' sums"
        )
    return CorpusStatistics(message.passages, message.total_length, frequencies)


def shard_vector(values: Sequence[float], plan: Plan, dimension: int) -> FloatArray | None:
    """The query's vector for a plan with a dense side: the collection's dimension, finite."""
    if not plan.uses_vector:
        return None
    if len(values) != dimension:
        raise InvalidArgument(
            f"vector has {len(values)} values; this collection's encoder makes {dimension}"
        )
    vector = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise InvalidArgument("vector holds a NaN or infinite value")
    return vector


def shard_hydration(
    request: shard_pb2.ShardHydrateRequest, limits: Limits
) -> tuple[IntArray, FloatArray]:
    """The passage ids to hydrate, at most max_k, each with its score."""
    if len(request.passage_ids) > limits.max_k:
        raise InvalidArgument(
            f"passage_ids has {len(request.passage_ids):,} entries, above max_k={limits.max_k}"
        )
    if len(request.scores) != len(request.passage_ids):
        raise InvalidArgument(
            f"scores has {len(request.scores)} entries for {len(request.passage_ids)} "
            "passage_ids; send one score per passage"
        )
    return (
        np.asarray(request.passage_ids, dtype=np.int64),
        np.asarray(request.scores, dtype=np.float32),
    )


# Records one write may take in one shard's log (each up to the NATS server's max_payload).
MAX_APPLIED_SEQUENCES = 64


def shard_sequences(sequences: Sequence[int], shards: int, field: str) -> list[int]:
    """Read-your-writes of a sharded collection: one sequence per shard (none: no wait)."""
    if sequences and len(sequences) != shards:
        raise InvalidArgument(
            f"{field}min_shard_sequences has {len(sequences)} entries for a collection of "
            f"{shards} shards; send one per shard (a write's shard_sequences), or none"
        )
    return list(sequences) or [0] * shards


def unsharded_read(sequences: Sequence[int], field: str) -> None:
    """Refuses shard sequences on a read of an unsharded collection, which has one log."""
    if sequences:
        raise InvalidArgument(
            f"{field}min_shard_sequences is set, but the collection is not sharded; use "
            "min_sequence"
        )


def applied_sequences(sequences: Sequence[int]) -> list[int]:
    """The records of one write in one shard's log, whose outcome ShardApplied reports."""
    if not 1 <= len(sequences) <= MAX_APPLIED_SEQUENCES:
        raise InvalidArgument(
            f"sequences has {len(sequences)} entries; send 1..{MAX_APPLIED_SEQUENCES}"
        )
    if any(sequence == 0 for sequence in sequences):
        raise InvalidArgument("sequences holds 0; log sequences start at 1")
    return list(sequences)


def batch_size(requests: Sequence[object], limits: Limits) -> None:
    if not requests:
        raise InvalidArgument("requests is empty; send at least one search")
    if len(requests) > limits.max_batch_searches:
        raise InvalidArgument(
            f"requests has {len(requests)} searches, above max_batch_searches="
            f"{limits.max_batch_searches}; split the batch"
        )


class UpsertStream:
    """Checks an Upsert stream message by message as it arrives: its size, one collection, each
    batch of documents, ids unique across the stream. Nothing is applied until it ends."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.collection: str | None = None
        self.documents: list[StoredDocument] = []
        self._seen: set[str] = set()
        self._messages = 0
        self._bytes = 0

    def add(self, message: retriever_pb2.UpsertRequest) -> str | None:
        """Checks one message and keeps its documents. Returns the collection's name when this is
        the first message, so the caller can refuse an unknown one before the rest arrives."""
        where = f"message {self._messages}"
        self._bytes += message.ByteSize()
        if self._bytes > self.limits.max_stream_bytes:
            raise InvalidArgument(
                f"{where}: the stream carries more than max_stream_bytes="
                f"{self.limits.max_stream_bytes:,} bytes (it is held whole until it ends); "
                "split it into several streams (RetrieverClient.ingest does)"
            )
        first = self.collection is None
        if first:
            self.collection = collection_name(message.collection)
        elif message.collection != self.collection:
            raise InvalidArgument(
                f"{where}: collection={shown(message.collection)} differs from "
                f"{self.collection!r} named earlier in the stream; use one stream per collection"
            )
        batch = [StoredDocument(d.id, d.text, d.title, dict(d.metadata)) for d in message.documents]
        documents(batch, self.limits, f"{where}: documents")
        for position, document in enumerate(batch):
            if document.doc_id in self._seen:
                raise InvalidArgument(
                    f"{where}: documents[{position}].id={shown(document.doc_id)} was already "
                    "sent earlier in this stream; send each id once per stream"
                )
            self._seen.add(document.doc_id)
        self.documents.extend(batch)
        if len(self.documents) > self.limits.max_documents_per_stream:
            raise InvalidArgument(
                f"the stream carries more than max_documents_per_stream="
                f"{self.limits.max_documents_per_stream} documents; split it into several streams"
            )
        self._messages += 1
        return self.collection if first else None

    def finish(self) -> tuple[str, list[StoredDocument]]:
        """The collection and every document, once the stream has ended."""
        if self.collection is None:
            raise InvalidArgument("the Upsert stream was empty; send at least one message")
        return self.collection, self.documents
