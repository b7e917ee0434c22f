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

Each shard may have several replicas: a phase goes to the first that answers (``remote_shard``
reports one that cannot be reached), and a shard with none answering is UNAVAILABLE by name,
or left out and reported when the caller allows a partial answer.
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from realm.errors import DeadlineExceeded, Unavailable
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
    runs_inline,
)
from realm.retriever.topk import FloatArray, IntArray

T = TypeVar("T")


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that holds ``doc_id``: a hash every process and version agrees on (Python's
    ``hash`` of a string changes with each process), so a document's shard never moves."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


# Separates a collection's name from its shard in a local collection's name ("." is not allowed
# in a collection's name, so they cannot meet).
SHARD_INFIX = ".shard-"


def shard_name(name: str, shard: int) -> str:
    """The local collection that holds ``shard`` of sharded collection ``name``."""
    return f"{name}{SHARD_INFIX}{shard}"


def public_name(local: str) -> tuple[str, int | None]:
    """``(collection, shard)`` of a local collection (shard None: an unsharded collection)."""
    name, infix, shard = local.partition(SHARD_INFIX)
    return (name, int(shard)) if infix else (name, None)


class Shard(Protocol):
    """What a coordinator needs from one shard, in this process or behind another replica.
    ``rank`` names its candidates by handles that only ``hydrate`` of the same replica reads
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
    """A shard served by this process: one consistent view of one collection. It ranks where
    an unsharded search of the same mode and size runs (``runs_inline``): a dense or large
    ranking on the event loop would hold up every other call this process serves (remote
    shards' answers, writes, the shard map) and serialise searches numpy could run side by
    side. Hydrating reads only the final hits, so it stays on the loop, as in an inline search."""

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
        if runs_inline(plan.mode, self.view.passages):
            return self.searcher.rank(self.view, plan, tokens, statistics, vector)
        return await asyncio.to_thread(
            self.searcher.rank, self.view, plan, tokens, statistics, vector
        )

    async def hydrate(self, handles: IntArray, scores: FloatArray) -> list[Hit]:
        return self.searcher.hydrate(self.view, handles, scores)


class ShardUnreachable(Exception):
    """A replica of a shard did not answer (stopped, restarting, cut off): another may."""


class ShardDown(Unavailable):
    """No replica of a shard answered."""

    def __init__(self, number: int, failures: Sequence[str]) -> None:
        super().__init__(
            f"shard {number} is unavailable: none of its replicas answered "
            f"({'; '.join(failures) or 'it has no replica'}); retry, or search with "
            "allow_partial to get the other shards' hits"
        )
        self.number = number


class StaleStatistics(Exception):
    """A shard's statistics came from the coordinator's cache, and the shard has applied writes
    since: it ranked nothing, and the search starts over with statistics asked for anew."""


class _RankLost(Exception):
    """The replica that ranked a shard's candidates went away before it hydrated them: the
    handles it gave are its own, so the search starts over on another replica."""


class _ReplicatedShard:
    """One shard held by several replicas, for one search: each phase goes to the first
    replica that answers and stays with it, so the replica that ranked is the one that
    hydrates (its handles are its own). Replicas that failed stay skipped on a restart."""

    def __init__(self, number: int, replicas: Sequence[Shard]) -> None:
        self.number = number
        self.replicas = list(replicas)
        self.current = 0
        self.failures: list[str] = []

    async def ask(self, phase: Callable[[Shard], Awaitable[T]]) -> T:
        """The phase's answer from the first replica that gives one. The search's deadline
        running out on a replica after another failed ends the shard as down, with why each
        failed: a replica that waited out the deadline for a sequence it never reached is the
        reason to report, not the deadline the next one was left with."""
        while self.current < len(self.replicas):
            try:
                return await phase(self.replicas[self.current])
            except ShardUnreachable as error:
                self.failures.append(str(error))
                self.current += 1
            except DeadlineExceeded as error:
                if not self.failures:
                    raise
                self.failures.append(str(error))
                break
        raise ShardDown(self.number, self.failures)

    async def hydrate(self, handles: IntArray, scores: FloatArray) -> list[Hit]:
        if self.current >= len(self.replicas):
            raise ShardDown(self.number, self.failures)
        try:
            return await self.replicas[self.current].hydrate(handles, scores)
        except ShardUnreachable as error:
            self.failures.append(str(error))
            self.current += 1
            raise _RankLost from error


@dataclass(frozen=True, slots=True)
class ShardedHits:
    """A sharded search's answer: the hits, and the shards left out (``allow_partial``)."""

    hits: list[Hit]
    missing_shards: list[int]


@dataclass(frozen=True, slots=True)
class Coordinator:
    """Answers a query over every shard of one collection; the shards share its analyzer,
    encoder and fusion defaults (they are the collection's settings). Each phase goes to all
    shards at once, each shard to the first of its replicas that answers."""

    analyzer: Analyzer
    encoder: Encoder
    fusion: FusionParams

    async def search(
        self,
        replicas: Sequence[Sequence[Shard]],
        query: SearchQuery,
        allow_partial: bool = False,
    ) -> ShardedHits:
        """The collection's top k; ``replicas[n]`` holds shard ``n``, best-placed first. A
        shard none of whose replicas answers raises ``ShardDown`` (UNAVAILABLE, naming it);
        with ``allow_partial`` it is left out and reported instead."""
        shards = [_ReplicatedShard(n, held) for n, held in enumerate(replicas)]
        while True:
            try:
                return await self._search(shards, query, allow_partial)
            except _RankLost:
                # The replica that went away stays skipped, so this ends: at the latest when
                # a shard has no replica left and its next phase raises ShardDown.
                continue
            except StaleStatistics:
                # The shard's cached statistics were dropped, so the next statistics phase
                # asks it, and a rank after a fresh answer is never refused as stale.
                continue

    async def _search(
        self, shards: list[_ReplicatedShard], query: SearchQuery, allow_partial: bool
    ) -> ShardedHits:
        plan = Plan.of(query, self.fusion)
        tokens = self.analyzer.tokens(query.text)
        alive = {shard.number: shard for shard in shards}
        missing: list[int] = []

        async def each(
            phase: Callable[[_ReplicatedShard], Awaitable[T]], numbers: Sequence[int]
        ) -> dict[int, T]:
            answers = await asyncio.gather(
                *(phase(alive[n]) for n in numbers), return_exceptions=True
            )
            done: dict[int, T] = {}
            for number, answer in zip(numbers, answers, strict=True):
                if isinstance(answer, ShardDown) and allow_partial:
                    missing.append(number)
                    del alive[number]
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    done[number] = answer
            return done

        statistics = None
        if plan.uses_bm25 and len(shards) > 1:
            parts = await each(lambda s: s.ask(lambda r: r.statistics(tokens)), list(alive))
            statistics = CorpusStatistics.combined(list(parts.values()))
        vector = None
        if plan.uses_vector:  # off the event loop: the model takes milliseconds per query
            vector = await asyncio.to_thread(encode_query, self.encoder, query.text)
        rankings = await each(
            lambda s: s.ask(lambda r: r.rank(plan, tokens, statistics, vector)), list(alive)
        )
        numbers = list(rankings)
        merged = merge([rankings[n] for n in numbers], plan)
        picked = {n: merged.shards == i for i, n in enumerate(numbers)}
        hydrated = await each(
            lambda s: s.hydrate(merged.rows[picked[s.number]], merged.scores[picked[s.number]]),
            [n for n in numbers if picked[n].any()],
        )
        # Each shard's hits come back in merged order; restoring the order across shards by
        # (score, shard) keeps it and drops nothing a shard could not hydrate.
        ranked = [
            (-hit.score, number, order, hit)
            for number, hits in hydrated.items()
            for order, hit in enumerate(hits)
        ]
        hits = [hit for *_, hit in sorted(ranked, key=lambda entry: entry[:3])]
        return ShardedHits(hits, sorted(missing))
