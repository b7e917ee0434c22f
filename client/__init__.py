"""Python client for ReaLM's gRPC services: typed results, typed errors, no protobufs to handle."""

from client.connection import ConnectionOptions
from client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    IngestInterrupted,
    InvalidArgument,
    NotFound,
    RealmClientError,
    ResourceExhausted,
    Unauthenticated,
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
from client.realm_client import AsyncRealmClient, RealmClient
from client.retriever import CollectionInfo, Document, RetrieverClient, SearchHit, UpsertSummary

__all__ = [
    "AlreadyExists",
    "Answer",
    "AsyncRealmClient",
    "CitationSpan",
    "CollectionInfo",
    "ConnectionOptions",
    "DeadlineExceeded",
    "Document",
    "ExtractedField",
    "GeneratorClient",
    "IngestInterrupted",
    "InvalidArgument",
    "NotFound",
    "RealmClient",
    "RealmClientError",
    "ResourceExhausted",
    "RetrieverClient",
    "SearchHit",
    "Source",
    "Unauthenticated",
    "Unavailable",
    "UpsertSummary",
    "generate_request",
]
