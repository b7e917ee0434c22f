"""Python client for ReaLM's gRPC services: typed results, typed errors, no protobufs to handle."""

from realm.channels import ConnectionOptions
from realm.client.errors import (
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
from realm.client.generator import (
    Answer,
    CitationSpan,
    ExtractedField,
    GeneratorClient,
    Source,
    generate_request,
)
from realm.client.realm_client import AsyncRealmClient, RealmClient
from realm.client.retriever import (
    CollectionInfo,
    Document,
    RetrieverClient,
    SearchHit,
    UpsertSummary,
)

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
