"""The read path: rank a view, then hydrate the hits from the store.

Shared by the writer's ``Collection`` and a worker process's ``Replica``, so a search answers
the same whichever process takes it.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np

from realm import tracing
from realm.retriever import fusion
from realm.retriever.analyzer import Analyzer
from realm.retriever.live import View
from realm.retriever.store import DocumentStore, PassageRecord
from realm.retriever.topk import FloatArray, IntArray, top_k

SearchMode = Literal["bm25", "dense", "hybrid"]


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


class Searcher:
    """Ranks a ``View`` and hydrates its hits; holds no state of its own. The view's generation
    brings the encoder and settings its vectors were made with (``Generation``)."""

    def __init__(self, analyzer: Analyzer, store: DocumentStore) -> None:
        self.analyzer = analyzer
        self.store = store

    def search(self, view: View, query: SearchQuery) -> list[Hit]:
        if view.passages == 0:
            return []
        allowed = view.allowed_rows(query.filter) if query.filter else None
        if allowed is not None and allowed.size == 0:
            return []
        rows, scores = self._rank(view, query, allowed)
        pids = view.pids(rows)
        with tracing.span("hydrate", hits=len(pids)):
            records = self.store.passages([int(p) for p in pids])
        # A row purged after a much later swap can be missing for a very old view: skip it.
        return [
            Hit(records[int(pid)], float(score))
            for pid, score in zip(pids, scores, strict=True)
            if int(pid) in records
        ]

    def _rank(
        self, view: View, query: SearchQuery, allowed: IntArray | None
    ) -> tuple[IntArray, FloatArray]:
        if query.mode == "bm25":
            return self._bm25_top(view, query.text, query.k, allowed)[:2]
        if query.mode == "dense":
            return self._dense_top(view, query.text, query.k, allowed)[:2]
        params = view.generation.settings.fusion
        method = query.fusion_method or params.method
        weight = params.dense_weight if query.dense_weight is None else query.dense_weight
        if weight == 0.0:  # both fusions rank by BM25 alone: no query to encode
            return self._bm25_top(view, query.text, query.k, allowed)[:2]
        depth = max(query.k, params.depth)
        bm25_rows, _, all_bm25 = self._bm25_top(view, query.text, depth, allowed)
        dense_rows, _, vector = self._dense_top(view, query.text, depth, allowed)
        with tracing.span("fuse", method=method):
            if method == "rrf":
                return fusion.rrf(bm25_rows, dense_rows, query.k, weight, params.rrf_k)
            candidates = np.union1d(bm25_rows, dense_rows)
            cosines = view.vectors(candidates) @ vector
            return fusion.weighted(candidates, all_bm25[candidates], cosines, query.k, weight)

    def _dense_top(
        self, view: View, text: str, k: int, allowed: IntArray | None
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        """The dense top k and the query's vector (hybrid's weighted fusion needs it again)."""
        with tracing.span("dense", k=k):
            vector = view.generation.encoder.encode_queries([text])[0]
            rows, scores = view.dense_top(vector, k, allowed)
        return rows, scores, vector

    def _bm25_top(
        self, view: View, text: str, k: int, allowed: IntArray | None
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        with tracing.span("bm25", k=k):
            scores = view.bm25_scores(self.analyzer.tokens(text), view.generation.settings.bm25)
            matching = np.flatnonzero(scores > 0).astype(np.int64)  # IDF is always positive
            if allowed is not None:
                matching = np.intersect1d(matching, allowed, assume_unique=True)
            rows, best = top_k(scores, k, matching)
        return rows, best, scores
