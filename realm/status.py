"""Domain errors and gRPC status codes: one table, read both ways.

The servers' error interceptor turns a domain error into its status (``status_of``); a service
calling another turns a status back into the domain error (``error_for``). The inverse is derived
from the table, so the two directions cannot disagree.
"""

import grpc

from realm import errors

STATUS_OF: dict[type[errors.RealmError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.StorageError: grpc.StatusCode.INTERNAL,
}
# INTERNAL read back is not a storage error of this process: it stays unmapped.
_ERROR_OF: dict[grpc.StatusCode, type[errors.RealmError]] = {
    code: error for error, code in STATUS_OF.items() if code is not grpc.StatusCode.INTERNAL
}


def status_of(error: errors.RealmError) -> grpc.StatusCode:
    """The status a domain error is sent as (its nearest mapped class; INTERNAL if none)."""
    for cls in type(error).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode) -> type[errors.RealmError] | None:
    """The domain error a status received from another service stands for; None for statuses
    that have none (INTERNAL, UNKNOWN, UNAUTHENTICATED...)."""
    return _ERROR_OF.get(code)


def received(code: grpc.StatusCode, details: str) -> errors.RealmError:
    """A status another service answered with, as the domain error this process passes on
    (unmapped statuses, INTERNAL among them, are passed on as INTERNAL)."""
    return (error_for(code) or errors.RealmError)(details)
