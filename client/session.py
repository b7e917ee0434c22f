"""Session consistency: a client reads its own writes, whichever replica answers.

In a cluster every replica applies the collection's log a little apart, so a search sent to
another replica right after a write might not see it yet. The client remembers the sequence of
its last write to each collection and sends it with every read of that collection as
``min_sequence``: the replica that answers waits until it has applied that much (or answers
UNAVAILABLE, which the client's retries send elsewhere). On a single node this costs nothing.
"""

import threading

from realm.client.types import Consistency, SearchOptions


class Session:
    """The newest sequence this client wrote to each collection, and how fresh reads must be."""

    def __init__(self, consistency: Consistency = "session") -> None:
        self.consistency: Consistency = consistency
        self._written: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrote(self, collection: str, sequence: int) -> None:
        with self._lock:
            self._written[collection] = max(sequence, self._written.get(collection, 0))

    def forget(self, collection: str) -> None:
        """The collection was made or deleted: its old sequences mean nothing any more."""
        with self._lock:
            self._written.pop(collection, None)

    def read(self, collection: str, options: SearchOptions) -> SearchOptions:
        """``options`` with the freshness this session asks of a read of ``collection``."""
        consistency = options.get("consistency") or self.consistency
        wanted = self._written.get(collection, 0) if consistency != "eventual" else 0
        return {**options, "consistency": consistency, "min_sequence": wanted}
