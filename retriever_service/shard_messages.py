"""The shard phases' domain values as ``realm.v1.shard`` messages and back, nothing more.

Both ends use these: the replica that answers a phase (``shard_servicer``) and the one that
coordinates the search (``remote_shard``), so a value crosses the network unchanged.
"""

import numpy as np

from realm.retriever.bm25 import CorpusStatistics
from realm.retriever.search import Hit, ShardRanking
from realm.retriever.store import PassageRecord
from realm.retriever.topk import IntArray
from realm.retriever.validation import FUSION_METHODS, SEARCH_MODES
from realm.v1 import common_pb2, retriever_pb2, shard_pb2

# The domain's modes and methods as the wire has them: validation's maps, inverted.
MODES = {
    mode: code for code, mode in SEARCH_MODES.items() if code != common_pb2.SEARCH_MODE_UNSPECIFIED
}
FUSIONS = {method: code for code, method in FUSION_METHODS.items() if method is not None}


def statistics_message(statistics: CorpusStatistics) -> shard_pb2.TermStatistics:
    return shard_pb2.TermStatistics(
        passages=statistics.passages,
        total_length=statistics.total_length,
        document_frequencies=dict(statistics.document_frequencies),
    )


def statistics_value(message: shard_pb2.TermStatistics) -> CorpusStatistics:
    return CorpusStatistics(
        message.passages, message.total_length, dict(message.document_frequencies)
    )


def ranking_message(
    ranking: ShardRanking, pids: IntArray, sequence: int
) -> shard_pb2.ShardRankResponse:
    """``ranking`` with its rows named by their passage ids ``pids``, which outlive the view."""
    return shard_pb2.ShardRankResponse(
        passage_ids=pids.tolist(),
        bm25=ranking.bm25.tolist(),
        dense=ranking.dense.tolist(),
        in_bm25=ranking.in_bm25.tolist(),
        in_dense=ranking.in_dense.tolist(),
        sequence=sequence,
    )


def ranking_value(message: shard_pb2.ShardRankResponse) -> ShardRanking:
    """The ranking with passage ids as its rows (what ``ShardHydrate`` takes back)."""
    return ShardRanking(
        np.asarray(message.passage_ids, dtype=np.int64),
        np.asarray(message.bm25, dtype=np.float32),
        np.asarray(message.dense, dtype=np.float32),
        np.asarray(message.in_bm25, dtype=bool),
        np.asarray(message.in_dense, dtype=bool),
    )


def hit_value(pid: int, message: retriever_pb2.SearchHit) -> Hit:
    passage = message.passage
    ordinal = int(passage.passage_id.rsplit("#", 1)[1])
    record = PassageRecord(
        pid,
        passage.doc_id,
        ordinal,
        passage.start,
        passage.end,
        passage.text,
        message.title,
        dict(message.metadata),
    )
    return Hit(record, message.score)
