"""Python client for ReaLM's gRPC services: typed results, typed errors, no protobufs to handle."""

from client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RealmClientError,
    ResourceExhausted,
    Unavailable,
)
from client.generator import (
    Answer,
    CitationSpan,
    ExtractedField,
    GeneratorClient,
    Source,
    generate_request,
)
from client.retriever import CollectionInfo, Document, RetrieverClient, SearchHit, UpsertSummary

__all__ = [
    "AlreadyExists",
    "Answer",
    "CitationSpan",
    "CollectionInfo",
    "DeadlineExceeded",
    "Document",
    "ExtractedField",
    "GeneratorClient",
    "InvalidArgument",
    "NotFound",
    "RealmClientError",
    "ResourceExhausted",
    "RetrieverClient",
    "SearchHit",
    "Source",
    "Unavailable",
    "UpsertSummary",
    "generate_request",
]
