"""What the sync and asyncio ``ingest`` share: which failures are retried, the pauses between
attempts, and how the summaries of acknowledged batches add up."""

from collections.abc import Callable, Iterator

from realm.client.errors import (
    DeadlineExceeded,
    IngestInterrupted,
    RealmClientError,
    ResourceExhausted,
    Unavailable,
)
from realm.client.types import UpsertSummary

# What an ingest sends again after a pause: the server was away, restarting or too busy.
TRANSIENT = (Unavailable, DeadlineExceeded, ResourceExhausted)
NOTHING_WRITTEN = UpsertSummary(0, 0, 0, 0, 0)


def added(total: UpsertSummary, done: UpsertSummary) -> UpsertSummary:
    """Two writes' summaries as one: counts add up, the later write's generation and sequence."""
    return UpsertSummary(
        total.inserted + done.inserted,
        total.replaced + done.replaced,
        total.passages + done.passages,
        done.generation,
        done.sequence,
        tuple(map(max, total.shard_sequences, done.shard_sequences))
        if total.shard_sequences
        else done.shard_sequences,
    )


def retry_pauses(attempts: int, max_pause_s: float) -> Iterator[float | None]:
    """The pause after each failed attempt of an ingest batch, doubling from half a second to
    ``max_pause_s``; None after the last attempt, which gives up."""
    if attempts < 1:
        raise ValueError(f"attempts={attempts} must be >= 1")
    pause = min(0.5, max_pause_s)
    for _ in range(attempts - 1):
        yield pause
        pause = min(pause * 2, max_pause_s)
    yield None


class IngestLedger:
    """The bookkeeping of one ingest, shared by the sync and asyncio loops: what is
    acknowledged so far, and whether a failed batch is sent again (after which pause)."""

    def __init__(
        self, attempts: int, max_pause_s: float, progress: Callable[[int], None] | None
    ) -> None:
        next(retry_pauses(attempts, max_pause_s))  # refuses nonsense before anything is sent
        self.attempts = attempts
        self.max_pause_s = max_pause_s
        self.progress = progress
        self.total = NOTHING_WRITTEN
        self.acknowledged = 0

    def pauses(self) -> Iterator[float | None]:
        return retry_pauses(self.attempts, self.max_pause_s)

    def pause_after(self, error: RealmClientError, pause: float | None) -> float:
        """The pause before the next attempt; IngestInterrupted when the failure is not
        transient or the attempts are spent."""
        if pause is None or not isinstance(error, TRANSIENT):
            raise IngestInterrupted(error, self.acknowledged) from error
        return pause

    def acknowledge(self, size: int, summary: UpsertSummary) -> None:
        self.total = added(self.total, summary)
        self.acknowledged += size
        if self.progress is not None:
            self.progress(size)
