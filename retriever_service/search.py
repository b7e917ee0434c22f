"""The read path: rank a view, merge, then hydrate the hits from the store.

Ranking is split the way a sharded collection needs it, and one index takes the same path
with a single shard, so both answer alike by construction:

1. ``Searcher.rank`` (on each shard): the shard's own top by BM25, scored with the whole
   collection's statistics, and its own top by cosine, each candidate with its exact score on
   both sides.
2. ``merge`` (once, wherever the query came in): the global top of each side out of the shards'
   tops, fused once.
3. ``Searcher.hydrate`` (on the shards that own the winners): the passages' text and metadata.

Shared by the writer's ``Collection`` and a worker process's ``Replica``, so a search answers
the same whichever process takes it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from realm import tracing
from realm.retriever import fusion
from realm.retriever.analyzer import Analyzer
from realm.retriever.bm25 import CorpusStatistics
from realm.retriever.embedder import Encoder
from realm.retriever.live import View
from realm.retriever.store import DocumentStore, PassageRecord
from realm.retriever.topk import FloatArray, IntArray, top_k

SearchMode = Literal["bm25", "dense", "hybrid"]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A validated search request in domain terms."""

    text: str
    k: int
    mode: SearchMode = "hybrid"
    filter: tuple[tuple[str, str], ...] = ()
    fusion_method: fusion.FusionMethod | None = None
    dense_weight: float | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    passage: PassageRecord
    score: float


@dataclass(frozen=True, slots=True)
class Plan:
    """How one query is ranked, its options resolved against the collection's fusion defaults:
    the same on every shard and at the merge."""

    mode: SearchMode
    k: int
    # Rows each side contributes: k, or max(k, fusion depth) when the sides are fused.
    depth: int
    method: fusion.FusionMethod
    dense_weight: float
    rrf_k: int
    filter: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, query: SearchQuery, params: fusion.FusionParams) -> "Plan":
        method = query.fusion_method or params.method
        weight = params.dense_weight if query.dense_weight is None else query.dense_weight
        mode = query.mode
        if (
            mode == "hybrid" and weight == 0.0
        ):  # both fusions rank by BM25 alone: no query to encode
            mode = "bm25"
        depth = max(query.k, params.depth) if mode == "hybrid" else query.k
        return cls(mode, query.k, depth, method, weight, params.rrf_k, query.filter)

    @property
    def uses_bm25(self) -> bool:
        return self.mode != "dense"

    @property
    def uses_vector(self) -> bool:
        return self.mode != "bm25"


@dataclass(frozen=True, slots=True)
class ShardRanking:
    """One shard's candidates for a query: rows of its view with their scores on each side,
    and whether each row is in the shard's own top of that side.

    Every row of the collection's top ``depth`` on a side is in its shard's top ``depth`` on
    that side, so the merge finds the global tops among these rows. ``dense`` is the cosine the
    dense index ranked by, or for weighted fusion every candidate's exact cosine (which it
    normalises)."""

    rows: IntArray
    bm25: FloatArray
    dense: FloatArray
    in_bm25: BoolArray
    in_dense: BoolArray

    @classmethod
    def empty(cls) -> "ShardRanking":
        none = np.empty(0, dtype=np.float32)
        flags = np.empty(0, dtype=bool)
        return cls(np.empty(0, dtype=np.int64), none, none, flags, flags)


@dataclass(frozen=True, slots=True)
class Merged:
    """The merged top k: for each hit, the shard that holds it, its row there and its score."""

    shards: IntArray
    rows: IntArray
    scores: FloatArray


# BM25 over a collection this size takes less than handing the call to a worker thread and back
# costs under load (figures in docs/benchmarks.md), so such searches run inline. Larger
# collections, and dense or hybrid searches (whose model call releases the GIL), go to a thread
# so that one long search does not hold up the event loop.
INLINE_BM25_MAX_PASSAGES = 200_000


def runs_inline(mode: SearchMode, passages: int) -> bool:
    """Whether a search over ``passages`` runs on the event loop rather than a worker thread."""
    return mode == "bm25" and passages <= INLINE_BM25_MAX_PASSAGES


def encode_query(encoder: Encoder, text: str) -> FloatArray:
    """The query's vector, encoded once per search however many shards it goes to (they share
    the collection's encoder)."""
    with tracing.span("encode"):
        vector: FloatArray = encoder.encode_queries([text])[0]
    return vector


def merge(rankings: Sequence[ShardRanking], plan: Plan) -> Merged:
    """The collection's top ``plan.k`` from its shards' candidates: each side's global top
    out of the shards' tops, fused once. Ties break by shard, then by row."""
    if len(rankings) == 1 and plan.mode != "hybrid":
        # One index's single side is its answer already (best first, k rows): skip the
        # arithmetic below, about a fifth of a BM25 search's time.
        only = rankings[0]
        scores = only.bm25 if plan.mode == "bm25" else only.dense
        return Merged(np.zeros(len(only.rows), dtype=np.int64), only.rows, scores)
    shards = np.concatenate(
        [np.full(len(r.rows), i, dtype=np.int64) for i, r in enumerate(rankings)]
    )
    rows = np.concatenate([r.rows for r in rankings])
    bm25 = np.concatenate([r.bm25 for r in rankings])
    dense = np.concatenate([r.dense for r in rankings])
    in_bm25 = np.flatnonzero(np.concatenate([r.in_bm25 for r in rankings]))
    in_dense = np.flatnonzero(np.concatenate([r.in_dense for r in rankings]))
    bm25_top, _ = top_k(bm25, plan.depth, in_bm25)
    dense_top, _ = top_k(dense, plan.depth, in_dense)
    if plan.mode == "bm25":
        best, scores = bm25_top, bm25[bm25_top]
    elif plan.mode == "dense":
        best, scores = dense_top, dense[dense_top]
    else:
        with tracing.span("fuse", method=plan.method):
            if plan.method == "rrf":
                best, scores = fusion.rrf(
                    bm25_top, dense_top, plan.k, plan.dense_weight, plan.rrf_k
                )
            else:
                candidates = np.union1d(bm25_top, dense_top)
                best, scores = fusion.weighted(
                    candidates, bm25[candidates], dense[candidates], plan.k, plan.dense_weight
                )
    return Merged(shards[best], rows[best], scores)


class Searcher:
    """Ranks a ``View`` and hydrates its hits; holds no state of its own. The view's generation
    brings the encoder and settings its vectors were made with (``Generation``)."""

    def __init__(self, analyzer: Analyzer, store: DocumentStore) -> None:
        self.analyzer = analyzer
        self.store = store

    def search(self, view: View, query: SearchQuery) -> list[Hit]:
        """One index's answer: a sharded collection's path with one shard and its own
        statistics."""
        if view.passages == 0:
            return []
        plan = Plan.of(query, view.generation.settings.fusion)
        vector = encode_query(view.generation.encoder, query.text) if plan.uses_vector else None
        ranking = self.rank(view, plan, self.analyzer.tokens(query.text), None, vector)
        merged = merge([ranking], plan)
        return self.hydrate(view, merged.rows, merged.scores)

    def rank(
        self,
        view: View,
        plan: Plan,
        tokens: list[str],
        statistics: CorpusStatistics | None,
        vector: FloatArray | None,
    ) -> ShardRanking:
        """This shard's candidates; BM25 with ``statistics`` (the collection's, when it is
        sharded) or the view's own."""
        allowed = view.allowed_rows(plan.filter) if plan.filter else None
        if view.passages == 0 or (allowed is not None and allowed.size == 0):
            return ShardRanking.empty()
        if plan.mode == "dense":
            return _one_side(*self._dense_top(view, plan, vector, allowed), dense_side=True)
        all_bm25, bm25_rows, bm25_best = self._bm25_top(view, plan, tokens, statistics, allowed)
        if plan.mode == "bm25":
            return _one_side(bm25_rows, bm25_best, dense_side=False)
        dense_rows, dense_best = self._dense_top(view, plan, vector, allowed)
        rows = np.union1d(bm25_rows, dense_rows)
        if plan.method == "weighted":
            dense = view.vectors(rows) @ _needed(vector)
        else:
            dense = np.zeros(len(rows), dtype=np.float32)
            dense[np.searchsorted(rows, dense_rows)] = dense_best
        return ShardRanking(
            rows,
            all_bm25[rows],
            dense.astype(np.float32, copy=False),
            np.isin(rows, bm25_rows, assume_unique=True),
            np.isin(rows, dense_rows, assume_unique=True),
        )

    def _bm25_top(
        self,
        view: View,
        plan: Plan,
        tokens: list[str],
        statistics: CorpusStatistics | None,
        allowed: IntArray | None,
    ) -> tuple[FloatArray, IntArray, FloatArray]:
        """Every row's BM25, and the shard's top ``depth`` matching rows with their scores."""
        with tracing.span("bm25", k=plan.depth):
            scores = view.bm25_scores(tokens, view.generation.settings.bm25, statistics)
            matching = np.flatnonzero(scores > 0).astype(np.int64)  # IDF is always positive
            if allowed is not None:
                matching = np.intersect1d(matching, allowed, assume_unique=True)
            rows, best = top_k(scores, plan.depth, matching)
        return scores, rows, best

    @staticmethod
    def _dense_top(
        view: View, plan: Plan, vector: FloatArray | None, allowed: IntArray | None
    ) -> tuple[IntArray, FloatArray]:
        with tracing.span("dense", k=plan.depth):
            return view.dense_top(_needed(vector), plan.depth, allowed)

    def hydrate(self, view: View, rows: IntArray, scores: FloatArray) -> list[Hit]:
        """The hits of ``rows`` of ``view``, in order, with their text and metadata."""
        return self.hydrate_passages(view.pids(rows), scores)

    def hydrate_passages(self, pids: npt.NDArray[np.int64], scores: FloatArray) -> list[Hit]:
        """The hits of passages ``pids``, in order. A passage purged since it was ranked (after
        a much later swap, for a very old view) is left out."""
        with tracing.span("hydrate", hits=len(pids)):
            records = self.store.passages([int(p) for p in pids])
        return [
            Hit(records[int(pid)], float(score))
            for pid, score in zip(pids, scores, strict=True)
            if int(pid) in records
        ]


def _one_side(rows: IntArray, scores: FloatArray, dense_side: bool) -> ShardRanking:
    """A ranking by one side only: its rows, best first, flagged as that side's top."""
    zeros = np.zeros(len(rows), dtype=np.float32)
    flags = np.ones(len(rows), dtype=bool)
    if dense_side:
        return ShardRanking(rows, zeros, scores, ~flags, flags)
    return ShardRanking(rows, scores, zeros, flags, ~flags)


def _needed(vector: FloatArray | None) -> FloatArray:
    if vector is None:
        raise ValueError("a dense or hybrid search needs the query's vector; encode it first")
    return vector
