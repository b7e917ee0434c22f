"""Per-collection settings and server-wide limits: the one typed place for retriever knobs."""

from dataclasses import asdict, dataclass, field
from typing import Any

from realm.retriever.analyzer import LANGUAGES, Language
from realm.retriever.bm25 import BM25Params
from realm.retriever.chunker import ChunkerConfig
from realm.retriever.dense import AnnoyParams
from realm.retriever.embedder import DEFAULT_MODEL


@dataclass(frozen=True, slots=True)
class CollectionSettings:
    """Fixed when a collection is created; stored in its ``collection.json``."""

    language: Language = "en"
    embedding_model: str = DEFAULT_MODEL
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    bm25: BM25Params = field(default_factory=BM25Params)
    annoy: AnnoyParams = field(default_factory=AnnoyParams)

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"language={self.language!r} is not supported; use one of {LANGUAGES}")
        if not self.embedding_model.strip():
            raise ValueError("embedding_model is empty; give a model name or path")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "CollectionSettings":
        return cls(
            language=payload["language"],
            embedding_model=payload["embedding_model"],
            chunker=ChunkerConfig(**payload["chunker"]),
            bm25=BM25Params(**payload["bm25"]),
            annoy=AnnoyParams(**payload["annoy"]),
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits enforced before any work is done (documented in docs/limits.md)."""

    max_k: int = 1000
    default_k: int = 10
    max_query_chars: int = 4096
    max_batch_searches: int = 64
    max_document_chars: int = 1_000_000
    max_documents_per_message: int = 2048
    max_documents_per_stream: int = 200_000
    max_id_bytes: int = 256
    max_ids_per_delete: int = 10_000
    max_title_bytes: int = 2048
    max_metadata_entries: int = 64
    max_metadata_key_bytes: int = 64
    max_metadata_value_bytes: int = 1024
    max_filter_entries: int = 16
    max_collections: int = 256
    # One Upsert stream: the bytes of its ids, texts, titles and metadata (it is held whole
    # until it ends), how long it may go without a message, and how long it may stay open.
    max_stream_bytes: int = 128 * 1024 * 1024
    stream_idle_s: float = 60.0
    max_stream_s: float = 600.0
    # Upsert streams in progress at once; one more gets RESOURCE_EXHAUSTED.
    max_concurrent_upserts: int = 4
    # What one Search or BatchSearch response may carry; checked before it is built.
    max_response_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_k",
            "default_k",
            "max_query_chars",
            "max_batch_searches",
            "max_document_chars",
            "max_documents_per_message",
            "max_id_bytes",
            "max_ids_per_delete",
            "max_title_bytes",
            "max_metadata_key_bytes",
            "max_metadata_value_bytes",
            "max_filter_entries",
            "max_stream_bytes",
            "max_concurrent_upserts",
            "max_response_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("stream_idle_s", "max_stream_s"):
            if not 0 < getattr(self, name) <= 86_400:
                raise ValueError(f"{name}={getattr(self, name)} is outside (0, 86400] seconds")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} exceeds max_k={self.max_k}")
