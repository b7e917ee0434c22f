"""Typed exceptions for gRPC status codes, carrying the server's message.

Each class names its status once (``code``); the status-to-class table is derived from them, and
``translated_errors`` is the one place a failed call becomes one of them (sync and asyncio).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import grpc


class RealmClientError(Exception):
    """A call failed; ``code`` is the gRPC status, the message is the server's explanation."""

    status: ClassVar[grpc.StatusCode | None] = None

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidArgument(RealmClientError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RealmClientError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RealmClientError):
    status = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(RealmClientError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RealmClientError):
    status = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RealmClientError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(RealmClientError):
    """The server cannot do it in its present state (a model it cannot load, say)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(RealmClientError):
    """The server wants a bearer token (``ConnectionOptions.bearer_token``) or a different one."""

    status = grpc.StatusCode.UNAUTHENTICATED


class IngestInterrupted(RealmClientError):
    """An ingest stopped on a batch that kept failing; ``acknowledged`` documents (the first ones
    in the order given) are durable, so skipping that many resumes it."""

    def __init__(self, cause: RealmClientError, acknowledged: int) -> None:
        super().__init__(
            cause.code,
            f"{cause}; the first {acknowledged} documents were acknowledged (skip them to resume)",
        )
        self.cause = cause
        self.acknowledged = acknowledged


_BY_STATUS: dict[grpc.StatusCode, type[RealmClientError]] = {
    error.status: error for error in RealmClientError.__subclasses__() if error.status is not None
}


def from_rpc_error(error: grpc.RpcError) -> RealmClientError:
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name
    return _BY_STATUS.get(code, RealmClientError)(code, details)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turns a failed call (sync or asyncio: it also wraps ``await``) into its typed exception."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
