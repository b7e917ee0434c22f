"""Session consistency: a client reads its own writes, whichever replica answers.

In a cluster every replica applies the collection's log a little apart, so a search sent to
another replica right after a write might not see it yet. The client remembers the sequence of
its last write to each collection and sends it with every read of that collection as
``min_sequence``: the replica that answers waits until it has applied that much (or answers
UNAVAILABLE, which the client's retries send elsewhere). On a single node this costs nothing.
A sharded collection has a log per shard, so its position is one sequence per shard
(``min_shard_sequences``).
"""

import threading
from collections.abc import Sequence

from realm.client.types import Consistency, SearchOptions


class Session:
    """The newest sequence this client wrote to each collection, and how fresh reads must be."""

    def __init__(self, consistency: Consistency = "session") -> None:
        self.consistency: Consistency = consistency
        # collection → (sequence, one sequence per shard of a sharded collection)
        self._written: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._lock = threading.Lock()

    def wrote(self, collection: str, sequence: int, shard_sequences: Sequence[int] = ()) -> None:
        with self._lock:
            before, shards = self._written.get(collection, (0, ()))
            if len(shards) != len(shard_sequences):
                shards = (0,) * len(shard_sequences)
            merged = tuple(map(max, shards, shard_sequences))
            self._written[collection] = (max(sequence, before), merged)

    def forget(self, collection: str) -> None:
        """The collection was made or deleted: its old sequences mean nothing any more."""
        with self._lock:
            self._written.pop(collection, None)

    def read(self, collection: str, options: SearchOptions) -> SearchOptions:
        """``options`` with the freshness this session asks of a read of ``collection``."""
        consistency = options.get("consistency") or self.consistency
        wanted = 0
        shards: tuple[int, ...] = ()
        if consistency != "eventual":
            wanted, shards = self._written.get(collection, (0, ()))
        return {
            **options,
            "consistency": consistency,
            "min_sequence": wanted,
            "min_shard_sequences": shards,
        }
