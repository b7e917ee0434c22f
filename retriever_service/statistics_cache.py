"""A coordinator's memory of another replica's shard statistics, valid at one applied sequence.

Phase 1 of a sharded search (the terms' document frequencies) is a round trip to every shard
held elsewhere. A shard's statistics change only when it applies a write, and every answer of
the shard says at which sequence it stands, so the coordinator keeps what a shard last told it
and skips the round trip while the shard has not moved: when the query's terms are all known at
that sequence and the reader asked for nothing newer. Any answer from the shard at another
sequence drops what was kept; the search that learns of it has used the older figures (the
same drift as a write landing between the phases, which Elasticsearch's
``dfs_query_then_fetch`` has too), and the next one asks again.
"""

from dataclasses import dataclass, field

from realm.retriever.bm25 import CorpusStatistics

# Terms kept per shard before the memory starts over (a few MB at most).
MAX_TERMS = 100_000


@dataclass
class StatisticsCache:
    """One shard's statistics as a replica of it last reported them."""

    # The shard's applied sequence they are valid at; -1: nothing kept.
    sequence: int = -1
    passages: int = 0
    total_length: int = 0
    frequencies: dict[str, int] = field(default_factory=dict)

    def lookup(self, tokens: list[str], min_sequence: int) -> CorpusStatistics | None:
        """The statistics of ``tokens`` when all are known, at ``min_sequence`` or later."""
        if self.sequence < 0 or self.sequence < min_sequence:
            return None
        try:
            frequencies = {token: self.frequencies[token] for token in tokens}
        except KeyError:
            return None
        return CorpusStatistics(self.passages, self.total_length, frequencies)

    def store(self, statistics: CorpusStatistics, sequence: int) -> None:
        """What the shard answered at ``sequence``."""
        if sequence != self.sequence or len(self.frequencies) > MAX_TERMS:
            self.frequencies = {}
        self.sequence = sequence
        self.passages = statistics.passages
        self.total_length = statistics.total_length
        self.frequencies.update(statistics.document_frequencies)

    def seen(self, sequence: int) -> None:
        """The shard answered another phase at ``sequence``: figures from before are void."""
        if sequence != self.sequence:
            self.sequence = -1
            self.frequencies = {}
