"""Typed exceptions for gRPC status codes, carrying the server's message."""

from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class RealmClientError(Exception):
    """A call failed; ``code`` is the gRPC status, the message is the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidArgument(RealmClientError):
    pass


class NotFound(RealmClientError):
    pass


class AlreadyExists(RealmClientError):
    pass


class ResourceExhausted(RealmClientError):
    pass


class Unavailable(RealmClientError):
    pass


class DeadlineExceeded(RealmClientError):
    pass


class Unauthenticated(RealmClientError):
    """The server wants a bearer token (``ConnectionOptions.bearer_token``) or a different one."""


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


_BY_CODE: dict[grpc.StatusCode, type[RealmClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def from_rpc_error(error: grpc.RpcError) -> RealmClientError:
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name
    return _BY_CODE.get(code, RealmClientError)(code, details)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turns a failed call (sync or asyncio: it also wraps ``await``) into its typed exception."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
