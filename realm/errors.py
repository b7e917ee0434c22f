"""The domain error hierarchy shared by every service.

Core code raises these and never imports grpc; one interceptor (``realm.interceptors``) maps each
class to a gRPC status code, so the mapping lives in exactly one place. Messages name the field,
the limit and the fix, because they travel to the caller verbatim.
"""


class RealmError(Exception):
    """Base class: an error whose message is safe and useful to show to the caller."""


class InvalidArgument(RealmError):
    """The request is malformed or breaks a documented limit (-> INVALID_ARGUMENT)."""


class NotFound(RealmError):
    """A named collection or document does not exist (-> NOT_FOUND)."""


class AlreadyExists(RealmError):
    """Something with that name exists already (-> ALREADY_EXISTS)."""


class ResourceExhausted(RealmError):
    """The server is at a capacity limit; retry later or raise the limit (-> RESOURCE_EXHAUSTED)."""


class Unavailable(RealmError):
    """The service cannot serve right now, e.g. still loading (-> UNAVAILABLE)."""


class DeadlineExceeded(RealmError):
    """The caller's deadline ran out while waiting on another service (-> DEADLINE_EXCEEDED)."""


class FailedPrecondition(RealmError):
    """The system is not in a state that allows the operation (-> FAILED_PRECONDITION)."""


class StorageError(RealmError):
    """The data directory could not be written or read back (-> INTERNAL, data left intact)."""


# Longest piece of a client's value quoted back in an error message.
MAX_SHOWN_CHARS = 80


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut to ``MAX_SHOWN_CHARS``: a message that echoes
    a megabyte id back would itself break the message-size limit."""
    if len(value) <= MAX_SHOWN_CHARS:
        return repr(value)
    return f"{value[:MAX_SHOWN_CHARS]!r}... ({len(value):,} characters)"
