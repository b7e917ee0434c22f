"""Re-encoding a collection with another embedding model while it serves (``realm reindex``).

The collection's live passages are encoded again with the new model on a background thread,
in batches, while searches and writes go on against the old model's generation. The next
generation is then built from that view (BM25 folded as any build does, the new vectors in
place of the old) and swapped in with the new encoder under the write lock
(``Collection.reindex``). Its manifest names the new model and lists no generation of the old
one, and the log's segments up to it are removed: nothing written with the old model can be
replayed into the new model's index.

Writes that arrive while the generation is built are encoded again and the build repeated;
the last attempt holds the write lock throughout, so a steady stream of writes delays the swap
by one build at most (writes wait then; searches never do).
"""

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from realm.retriever.embedder import Encoder
from realm.retriever.passages import titled
from realm.retriever.store import DocumentStore
from realm.retriever.topk import FloatArray

# Passages encoded per batch: progress is reported, and a cancel noticed, between batches.
BATCH_PASSAGES = 64
# Builds tried without holding writes off before the last one, which does.
UNLOCKED_ATTEMPTS = 2


class ReindexCancelled(Exception):
    """The server is stopping or the collection is being deleted: the old model keeps serving."""


@dataclass
class ReindexProgress:
    """One reindex as ``Stats`` reports it. Written by the reindex's thread, read by any."""

    model: str
    backend: str
    passages_done: int = 0
    passages_total: int = 0
    running: bool = True
    error: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)


class ReencodedVectors:
    """Passages' vectors from the new encoder, by passage id. Kept across build attempts, so a
    retry encodes only the passages written since the last one."""

    def __init__(self, encoder: Encoder, store: DocumentStore, progress: ReindexProgress) -> None:
        self.encoder = encoder
        self.store = store
        self.progress = progress
        self._by_pid: dict[int, FloatArray] = {}

    def encode_missing(self, pids: Sequence[int]) -> None:
        """Encodes the passages of ``pids`` not encoded yet (their store rows stay readable:
        no build purges them while a reindex holds builds off)."""
        missing = [pid for pid in pids if pid not in self._by_pid]
        self.progress.passages_total = len(self._by_pid) + len(missing)
        for start in range(0, len(missing), BATCH_PASSAGES):
            if self.progress.cancelled.is_set():
                raise ReindexCancelled
            batch = missing[start : start + BATCH_PASSAGES]
            records = self.store.passages(batch)
            vectors = self.encoder.encode(
                [titled(records[p].title, records[p].text) for p in batch]
            )
            self._by_pid.update(zip(batch, vectors, strict=True))
            self.progress.passages_done = len(self._by_pid)

    def of(self, pids: npt.NDArray[np.int64]) -> FloatArray:
        """The vectors of ``pids``, in their order (every one encoded already)."""
        if not pids.size:
            return np.empty((0, self.encoder.dimension), dtype=np.float32)
        return np.stack([self._by_pid[int(pid)] for pid in pids]).astype(np.float32)
