"""Python client for ReaLM's gRPC services: typed results, typed errors, no protobufs to handle.

``RetrieverClient`` / ``GeneratorClient`` block; ``AsyncRetrieverClient`` /
``AsyncGeneratorClient`` are the same for asyncio; ``RealmClient`` / ``AsyncRealmClient`` hold one
of each. Every RPC is described once (``calls``) and run by a sync or an async transport.
"""

from realm.channels import ConnectionOptions
from realm.client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    IngestInterrupted,
    InvalidArgument,
    NotFound,
    RealmClientError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from realm.client.generator import AsyncGeneratorClient, GeneratorClient
from realm.client.realm_client import AsyncRealmClient, RealmClient
from realm.client.retriever import AsyncRetrieverClient, RetrieverClient
from realm.client.types import (
    Answer,
    AnswerStyle,
    AskOptions,
    CitationSpan,
    CollectionInfo,
    CollectionStats,
    Consistency,
    Document,
    ExtractedField,
    GeneratorInfo,
    Grounding,
    Mode,
    ReindexStatus,
    SearchHit,
    SearchOptions,
    Source,
    Task,
    UpsertSummary,
)

__all__ = [
    "AlreadyExists",
    "Answer",
    "AnswerStyle",
    "AskOptions",
    "AsyncGeneratorClient",
    "AsyncRealmClient",
    "AsyncRetrieverClient",
    "CitationSpan",
    "CollectionInfo",
    "CollectionStats",
    "ConnectionOptions",
    "Consistency",
    "DeadlineExceeded",
    "Document",
    "ExtractedField",
    "FailedPrecondition",
    "GeneratorClient",
    "GeneratorInfo",
    "Grounding",
    "IngestInterrupted",
    "InvalidArgument",
    "Mode",
    "NotFound",
    "RealmClient",
    "RealmClientError",
    "ReindexStatus",
    "ResourceExhausted",
    "RetrieverClient",
    "SearchHit",
    "SearchOptions",
    "Source",
    "Task",
    "Unauthenticated",
    "Unavailable",
    "UpsertSummary",
]
