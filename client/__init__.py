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
from client.retriever import CollectionInfo, Document, RetrieverClient, SearchHit, UpsertSummary

__all__ = [
    "AlreadyExists",
    "CollectionInfo",
    "DeadlineExceeded",
    "Document",
    "InvalidArgument",
    "NotFound",
    "RealmClientError",
    "ResourceExhausted",
    "RetrieverClient",
    "SearchHit",
    "Unavailable",
    "UpsertSummary",
]
