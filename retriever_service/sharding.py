"""A collection split over shards, searched with exactly the scores of one index.

Most engines score BM25 with each shard's own statistics, so a document scores differently
depending on the shard it lands in. Here a search over shards runs in three phases, as
Elasticsearch's ``dfs_query_then_fetch`` does:

1. **statistics**: every shard's passage count, summed length and the query terms' document
   frequencies, summed (``CorpusStatistics.combined``); the sums are integers, so the average
   length and every IDF are the floats one index computes;
2. **rank**: every shard's own top by BM25 (scored with those sums) and by cosine (the query
   encoded once, here), each candidate with its exact scores; the global tops are merged out of
   them and fused once (``search.merge``);
3. **hydrate**: only the final hits, from the shards that hold them.

BM25 scores and every ranking therefore equal one index's over the same passages; only ties
break differently (by shard, then row, where one index breaks them by row). Dense search is
approximate (Annoy) on a shard of 4,096 passages or more, as on one index of that size, and the
two indexes then miss different neighbours.
"""

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from realm.retriever.analyzer import Analyzer
from realm.retriever.bm25 import CorpusStatistics
from realm.retriever.embedder import Encoder
from realm.retriever.fusion import FusionParams
from realm.retriever.live import View
from realm.retriever.search import (
    Hit,
    Plan,
    Searcher,
    SearchQuery,
    ShardRanking,
    encode_query,
    merge,
)
from realm.retriever.topk import FloatArray, IntArray


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that holds ``doc_id``. A keyed hash that every process and version agrees on
    (Python's ``hash`` of a string changes with each process), so a document's shard never
    moves."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class Shard(Protocol):
    """What a coordinator needs from one shard, in this process or behind another replica.
    ``rank`` names its candidates by handles that only ``hydrate`` of the same shard reads
    back: rows of one view here, passage ids over the network."""

    async def statistics(self, tokens: list[str]) -> CorpusStatistics: ...

    async def rank(
        self,
        plan: Plan,
        tokens: list[str],
        statistics: CorpusStatistics | None,
        vector: FloatArray | None,
    ) -> ShardRanking: ...

    async def hydrate(self, handles: IntArray, scores: FloatArray) -> list[Hit]: ...


@dataclass(frozen=True, slots=True)
class LocalShard:
    """A shard served by this process: one consistent view of one collection, ranked on the
    caller's thread."""

    searcher: Searcher
    view: View

    async def statistics(self, tokens: list[str]) -> CorpusStatistics:
        return self.view.term_statistics(tokens)

    async def rank(
        self,
        plan: Plan,
        tokens: list[str],
        statistics: CorpusStatistics | None,
        vector: FloatArray | None,
    ) -> ShardRanking:
        return self.searcher.rank(self.view, plan, tokens, statistics, vector)

    async def hydrate(self, handles: IntArray, scores: FloatArray) -> list[Hit]:
        return self.searcher.hydrate(self.view, handles, scores)


@dataclass(frozen=True, slots=True)
class Coordinator:
    """Answers a query over every shard of one collection; the shards share its analyzer,
    encoder and fusion defaults (they are the collection's settings). Each phase goes to all
    shards at once."""

    analyzer: Analyzer
    encoder: Encoder
    fusion: FusionParams

    async def search(self, shards: Sequence[Shard], query: SearchQuery) -> list[Hit]:
        plan = Plan.of(query, self.fusion)
        tokens = self.analyzer.tokens(query.text)
        statistics = None
        if plan.uses_bm25 and len(shards) > 1:
            parts = await asyncio.gather(*(s.statistics(tokens) for s in shards))
            statistics = CorpusStatistics.combined(parts)
        vector = encode_query(self.encoder, query.text) if plan.uses_vector else None
        rankings = await asyncio.gather(*(s.rank(plan, tokens, statistics, vector) for s in shards))
        merged = merge(rankings, plan)
        owners = [i for i in range(len(shards)) if (merged.shards == i).any()]
        hydrated = await asyncio.gather(
            *(
                shards[i].hydrate(
                    merged.rows[merged.shards == i], merged.scores[merged.shards == i]
                )
                for i in owners
            )
        )
        ranked = [
            (-hit.score, index, order, hit)
            for index, hits in zip(owners, hydrated, strict=True)
            for order, hit in enumerate(hits)
        ]
        # Each shard's hits come back in merged order; restoring the order across shards by
        # (score, shard) keeps it and drops nothing a shard could not hydrate.
        return [hit for *_, hit in sorted(ranked, key=lambda entry: entry[:3])]
