"""What a coordinator remembers of a shard's statistics is used only while the shard stands at
the sequence it was told at, and only for terms it was told about."""

from realm.retriever.bm25 import CorpusStatistics
from realm.retriever.statistics_cache import StatisticsCache


def test_statistics_are_reused_only_at_their_sequence_and_for_known_terms() -> None:
    cache = StatisticsCache()
    assert cache.lookup(["wing"], 0) is None  # nothing kept yet
    cache.store(CorpusStatistics(10, 100, {"wing": 3, "lift": 1}), sequence=7)
    assert cache.lookup(["wing", "wing"], 7) == CorpusStatistics(10, 100, {"wing": 3})
    assert cache.lookup(["wing", "drag"], 7) is None  # a term never asked about
    assert cache.lookup(["wing"], 8) is None  # the reader wrote something newer
    cache.store(CorpusStatistics(10, 100, {"drag": 2}), sequence=7)
    assert cache.lookup(["wing", "drag"], 0) == CorpusStatistics(10, 100, {"wing": 3, "drag": 2})
    cache.seen(7)  # a rank at the same sequence changes nothing
    assert cache.lookup(["lift"], 0) is not None
    cache.seen(9)  # the shard moved on: everything goes
    assert cache.lookup(["lift"], 0) is None
    cache.store(CorpusStatistics(11, 110, {"lift": 2}), sequence=9)
    assert cache.lookup(["wing"], 0) is None  # figures of sequence 7 are not mixed in
    assert cache.lookup(["lift"], 0) == CorpusStatistics(11, 110, {"lift": 2})
