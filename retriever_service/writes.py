"""Where the servicer's writes go: straight into this process's collections (a single node), or
through the cluster's log (``replication.Replication``). Both answer once the write is
durable and searchable here."""

import asyncio
from collections.abc import Sequence
from typing import Protocol

from realm.errors import FailedPrecondition, InvalidArgument
from realm.retriever.collection import Collection, DeleteResult, UpsertResult
from realm.retriever.registry import Registry
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import StoredDocument


class Writes(Protocol):
    """The write side of the service, and what a read needs to know of the log."""

    async def collection(self, name: str) -> Collection:
        """The unsharded collection ``name`` as served here; in a cluster one made through
        another replica a moment ago is waited for (NotFound if it exists nowhere)."""
        ...

    async def shards(self, name: str) -> int:
        """How many shards collection ``name`` has (1: unsharded; NotFound if none exists)."""
        ...

    async def shard(self, name: str, shard: int) -> Collection:
        """Shard ``shard`` of ``name`` as held here (an unsharded collection is its shard 0);
        UNAVAILABLE when this replica does not hold it."""
        ...

    def held(self, name: str, shard: int) -> Collection | None:
        """Shard ``shard`` of sharded collection ``name``, if this replica holds it."""
        ...

    async def create_collection(self, name: str, settings: CollectionSettings) -> object: ...

    async def delete_collection(self, name: str) -> int: ...

    async def upsert(self, name: str, documents: Sequence[StoredDocument]) -> UpsertResult: ...

    async def delete(self, name: str, doc_ids: Sequence[str]) -> DeleteResult: ...

    async def log_sequence(self, name: str) -> int:
        """The newest sequence written to the collection anywhere (a strong read's target)."""
        ...

    def lag(self, name: str) -> tuple[int, int]:
        """``(newest log sequence known here, records not yet applied here)``."""
        ...


class LocalWrites:
    """A single node: its own write-ahead log orders the writes; it is never behind."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def collection(self, name: str) -> Collection:
        return self.registry.get(name)

    async def shards(self, name: str) -> int:
        self.registry.get(name)  # NotFound when there is none
        return 1

    async def shard(self, name: str, shard: int) -> Collection:
        if shard != 0:
            raise InvalidArgument(f"shard={shard} is out of range: {name!r} has 1 shard")
        return self.registry.get(name)

    def held(self, name: str, shard: int) -> Collection | None:
        return None

    async def create_collection(self, name: str, settings: CollectionSettings) -> Collection:
        if settings.shards > 1:
            raise FailedPrecondition(
                f"config.shards={settings.shards}: a single node holds unsharded collections "
                "only; sharding spreads a collection over the replicas of a cluster (--nats, "
                "docs/operations.md)"
            )
        return await asyncio.to_thread(self.registry.create, name, settings)

    async def delete_collection(self, name: str) -> int:
        return await asyncio.to_thread(self.registry.delete, name)

    async def upsert(self, name: str, documents: Sequence[StoredDocument]) -> UpsertResult:
        return await asyncio.to_thread(self.registry.get(name).upsert, documents)

    async def delete(self, name: str, doc_ids: Sequence[str]) -> DeleteResult:
        return await asyncio.to_thread(self.registry.get(name).delete, doc_ids)

    async def log_sequence(self, name: str) -> int:
        return self.registry.get(name).snapshot().sequence

    def lag(self, name: str) -> tuple[int, int]:
        return self.registry.get(name).snapshot().sequence, 0
