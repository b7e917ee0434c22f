"""A collection split over shards ranks exactly as one index of the same documents.

Real collections on disk, one per shard, fed the same writes as one unsharded collection (each
document to the shard ``shard_of`` names) and searched through the coordinator. BM25 scores
must equal one index's to 1e-6 whatever each shard's generation, tail and tombstones look like;
dense and hybrid top 10 must be the same passages in the same order, ties aside.
"""

import asyncio
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from realm.app.beir import read_corpus, read_qrels, read_queries
from realm.app.retrieval_metrics import evaluate
from realm.errors import DeadlineExceeded
from realm.retriever.bm25 import CorpusStatistics
from realm.retriever.collection import Collection
from realm.retriever.embedder import SentenceTransformerEncoder
from realm.retriever.search import Hit, Searcher, SearchMode, SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.sharding import Coordinator, LocalShard, ShardDown, ShardUnreachable, shard_of
from realm.retriever.store import StoredDocument
from realm.retriever.topk import FloatArray
from tests.test_live_index import QUERIES, WORDS

TIE = 1e-6
Ranked = list[tuple[str, float]]


class CachingEncoder:
    """The session's encoder, remembering every text's vector: each corpus is encoded once for
    all of a test's layouts, and every layout gets bit-identical vectors."""

    def __init__(self, inner: SentenceTransformerEncoder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.fingerprint = inner.fingerprint
        self._passages: dict[str, FloatArray] = {}
        self._queries: dict[str, FloatArray] = {}

    def encode(self, texts: list[str]) -> FloatArray:
        return self._cached(texts, self._passages, self.inner.encode)

    def encode_queries(self, texts: list[str]) -> FloatArray:
        return self._cached(texts, self._queries, self.inner.encode_queries)

    @staticmethod
    def _cached(texts: list[str], cache: dict[str, FloatArray], encode: object) -> FloatArray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, encode(missing), strict=True))  # type: ignore[operator]
        return np.stack([cache[t] for t in texts]).astype(np.float32)


@dataclass
class Layout:
    """The same documents as one collection, or as several shards searched together."""

    collections: list[Collection]

    def write(self, documents: Sequence[StoredDocument]) -> None:
        for index, collection in enumerate(self.collections):
            mine = [d for d in documents if shard_of(d.doc_id, len(self.collections)) == index]
            if mine:
                collection.upsert(mine)

    def delete(self, doc_ids: Sequence[str]) -> None:
        for index, collection in enumerate(self.collections):
            mine = [d for d in doc_ids if shard_of(d, len(self.collections)) == index]
            if mine:
                collection.delete(mine)

    def compact(self, shard: int) -> None:
        self.collections[shard % len(self.collections)].compact()

    def search(self, query: SearchQuery) -> list[Hit]:
        first = self.collections[0]
        if len(self.collections) == 1:
            return first.search(query)
        coordinator = Coordinator(first.analyzer, first.encoder, first.settings.fusion)
        shards = [LocalShard(c.searcher, c.snapshot()) for c in self.collections]
        return asyncio.run(coordinator.search([[s] for s in shards], query)).hits

    def ranked(self, text: str, k: int, mode: SearchMode, **options: object) -> Ranked:
        hits = self.search(SearchQuery(text, k, mode, **options))  # type: ignore[arg-type]
        return [(h.passage.passage_id, h.score) for h in hits]

    def close(self) -> None:
        for collection in self.collections:
            collection.close()


def _layout(root: Path, shards: int, encoder: CachingEncoder) -> Layout:
    settings = CollectionSettings(language="en")
    return Layout(
        [
            Collection.create("sharded", root / f"{shards}-{i}", settings, lambda _: encoder, 10**9)
            for i in range(shards)
        ]
    )


def assert_ranks_alike(
    one: Layout, split: Layout, text: str, k: int, mode: SearchMode, **options: object
) -> None:
    expected = one.ranked(text, k + 1, mode, **options)  # one more: ties across the cut
    assert_ranked_alike(expected, split.ranked(text, k, mode, **options), k, mode)


def assert_ranked_alike(expected: Ranked, got: Ranked, k: int, mode: SearchMode) -> None:
    """A sharded top k (``got``) has one index's scores to 1e-6 at every position and the
    same passage wherever its score is not tied with another one, in the list or just past its
    cut (a tie may break the other way across shards): ``expected`` is one index's top k + 1.
    BM25 scores of passages both lists hold are equal too."""
    assert len(got) == len(expected[:k])
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected[:k]], rtol=0, atol=TIE)
    scores = np.asarray([s for _, s in expected])
    for position, ((want, score), (have, _)) in enumerate(zip(expected, got, strict=False)):
        tied = np.count_nonzero(np.abs(scores - score) <= TIE) > 1
        assert have == want or tied, f"position {position}: {have} where one index has {want}"
    if mode == "bm25":
        held = dict(got)
        for passage_id, score in expected:
            if passage_id in held:
                assert held[passage_id] == pytest.approx(score, abs=TIE), passage_id


def _ranks_are_unique(layout: Layout, text: str) -> bool:
    """Whether no two of the query's top 100 passages tie on either side. Reciprocal rank
    fusion scores ranks, so a tie broken the other way across shards changes fused scores."""
    for mode in ("bm25", "dense"):
        scores = np.sort([s for _, s in layout.ranked(text, 100, mode)])
        if np.any(np.diff(scores) <= TIE):
            return False
    return True


# ---------------------------------------------------------------------------- unit level
def test_a_document_s_shard_is_fixed_across_processes_and_spreads_evenly() -> None:
    # Pinned values: a change of the hash would move existing documents to other shards.
    assert [shard_of(d, 4) for d in ("doc-1", "doc-2", "doc-3", "über")] == [1, 2, 2, 3]
    counts = np.bincount([shard_of(f"doc-{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900, counts
    assert shard_of("anything", 1) == 0


def test_statistics_of_shards_add_up_to_the_collection_s() -> None:
    parts = [
        CorpusStatistics(10, 100, {"wing": 3, "flow": 0}),
        CorpusStatistics(5, 70, {"wing": 1, "flow": 2}),
    ]
    combined = CorpusStatistics.combined(parts)
    assert (combined.passages, combined.total_length) == (15, 170)
    assert dict(combined.document_frequencies) == {"wing": 4, "flow": 2}
    assert combined.average_length == 170 / 15
    assert CorpusStatistics(0, 0, {}).average_length == 1.0


# ---------------------------------------------------------------------------- small corpus
def _random_document(rng: random.Random, doc_id: str) -> StoredDocument:
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    text = " ".join(rng.choices(WORDS, weights, k=rng.randint(3, 60))) + "."
    return StoredDocument(doc_id, text, f"T{doc_id}", {"half": str(int(doc_id[1:]) % 2)})


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_with_tails_and_tombstones_rank_like_one_index(
    tmp_path: Path, encoder: SentenceTransformerEncoder, shards: int
) -> None:
    caching = CachingEncoder(encoder)
    one, split = _layout(tmp_path, 1, caching), _layout(tmp_path, shards, caching)
    rng = random.Random(shards)
    alive: list[str] = []
    made = 0
    for step in range(30):
        if step % 7 == 6 and len(alive) > 4:
            doomed = rng.sample(alive, 3)
            alive = [d for d in alive if d not in doomed]
            for layout in (one, split):
                layout.delete(doomed)
            continue
        new = [f"d{made + i}" for i in range(rng.randint(1, 5))]
        made += len(new)
        replaced = rng.sample(alive, min(2, len(alive)))
        documents = [_random_document(rng, d) for d in [*new, *replaced]]
        alive += new
        for layout in (one, split):
            layout.write(documents)
        if step in (8, 17):  # generations with tombstones under later tails, differently per shard
            one.compact(0)
            split.compact(step)
    shard_views = [c.snapshot() for c in split.collections]
    assert any(v.tail_rows for v in shard_views)
    assert any(v.dead_generation_count for v in shard_views)

    rrf_checked = 0
    for text in [*QUERIES, "river river stone", "no such words"]:
        assert_ranks_alike(one, split, text, 1000, "bm25")
        assert_ranks_alike(one, split, text, 10, "dense")
        assert_ranks_alike(one, split, text, 10, "hybrid")
        if _ranks_are_unique(one, text):
            rrf_checked += 1
            assert_ranks_alike(one, split, text, 10, "hybrid", fusion_method="rrf")
        assert_ranks_alike(one, split, text, 5, "hybrid", filter=(("half", "1"),))
        assert_ranks_alike(one, split, text, 3, "hybrid", dense_weight=0.0)
    assert rrf_checked >= 2
    for layout in (one, split):
        layout.close()


def test_an_empty_shard_and_an_empty_collection_answer_nothing_rather_than_fail(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    split = _layout(tmp_path, 3, CachingEncoder(encoder))
    assert split.ranked("river", 10, "hybrid") == []
    only = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", 3) == 1)
    split.write([StoredDocument(only, "river stone lamp")])
    for mode in ("bm25", "dense", "hybrid"):
        assert [p for p, _ in split.ranked("river", 10, mode)] == [f"{only}#0"]
    split.close()


class ThreadRecorder:
    """Passes every call on to a real object, noting the thread that made each watched one."""

    def __init__(self, inner: object, watched: set[str]) -> None:
        self.inner = inner
        self.watched = watched
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in self.watched:
            return attribute

        def recorded(*args: object, **kwargs: object) -> object:
            self.calls.append((name, threading.get_ident()))
            return attribute(*args, **kwargs)

        return recorded


def test_the_coordinator_encodes_and_ranks_local_shards_where_an_unsharded_search_would_run(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    """The model and a dense ranking go to worker threads: on the event loop they would stall
    every other call the replica serves (remote shards' answers, writes). BM25 over a small
    shard stays on the loop, where it is faster than the hop to a thread (runs_inline)."""
    split = _layout(tmp_path, 2, CachingEncoder(encoder))
    split.write([StoredDocument(f"d{i}", f"river stone lamp {WORDS[i]}") for i in range(8)])
    first = split.collections[0]

    async def search(mode: SearchMode) -> tuple[int, list[tuple[str, int]]]:
        recording_encoder = ThreadRecorder(first.encoder, {"encode_queries"})
        searchers = [ThreadRecorder(c.searcher, {"rank"}) for c in split.collections]
        coordinator = Coordinator(
            first.analyzer, cast(Any, recording_encoder), first.settings.fusion
        )
        shards = [
            [LocalShard(cast(Searcher, searcher), collection.snapshot())]
            for searcher, collection in zip(searchers, split.collections, strict=True)
        ]
        found = await coordinator.search(shards, SearchQuery("river", 10, mode))
        assert len(found.hits) == 8
        return threading.get_ident(), recording_encoder.calls + [
            call for searcher in searchers for call in searcher.calls
        ]

    loop_thread, calls = asyncio.run(search("hybrid"))
    assert sorted(name for name, _ in calls) == ["encode_queries", "rank", "rank"]
    assert all(thread != loop_thread for _, thread in calls), calls
    loop_thread, calls = asyncio.run(search("bm25"))
    assert calls == [("rank", loop_thread), ("rank", loop_thread)]
    split.close()


class FailingReplica:
    """A replica of a shard whose every phase fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def statistics(self, tokens: list[str]) -> CorpusStatistics:
        raise self.error

    async def rank(self, *args: object) -> object:
        raise self.error

    async def hydrate(self, *args: object) -> list[Hit]:
        raise self.error


def test_a_deadline_run_out_after_a_replica_failed_reports_the_shard_down_with_why(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    """The first replica waited out the search's time for a sequence it never reached; the
    deadline then ran out on the next. The caller hears the shard is down and why
    (UNAVAILABLE), not DEADLINE_EXCEEDED. A deadline run out on the first replica asked is the
    caller's own and stays DEADLINE_EXCEEDED."""
    split = _layout(tmp_path, 1, CachingEncoder(encoder))
    first = split.collections[0]
    coordinator = Coordinator(first.analyzer, first.encoder, first.settings.fusion)
    behind = ShardUnreachable("replica-a: not yet min_sequence=9 after waiting 1.6 s")
    late = DeadlineExceeded("the search's deadline passed before shard 0 was asked")
    query = SearchQuery("river", 10, "bm25")

    def search(*replicas: FailingReplica) -> object:
        return asyncio.run(coordinator.search([cast(Any, replicas)], query))

    with pytest.raises(ShardDown, match=r"shard 0 is unavailable.*min_sequence=9.*deadline"):
        search(FailingReplica(behind), FailingReplica(late), FailingReplica(late))
    with pytest.raises(DeadlineExceeded):
        search(FailingReplica(late), FailingReplica(behind))
    split.close()


# ---------------------------------------------------------------------------- Cranfield
@pytest.fixture(scope="module")
def cranfield_layouts(
    cranfield: Path, encoder: SentenceTransformerEncoder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[int, Layout]]:
    """Cranfield as one index and over 2 and 4 shards; the corpus is encoded once."""
    caching = CachingEncoder(encoder)
    root = tmp_path_factory.mktemp("cranfield-shards")
    documents = [
        StoredDocument(d.doc_id, d.text, d.title) for d in read_corpus(cranfield / "corpus.jsonl")
    ]
    layouts = {shards: _layout(root, shards, caching) for shards in (1, 2, 4)}
    for layout in layouts.values():
        for start in range(0, len(documents), 200):
            layout.write(documents[start : start + 200])
    layouts[1].compact(0)  # one index scored from its precomputed arrays, the shards live
    yield layouts
    for layout in layouts.values():
        layout.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shards", [2, 4])
def test_cranfield_over_shards_scores_and_ranks_like_one_index(
    cranfield: Path, cranfield_layouts: dict[int, Layout], shards: int
) -> None:
    one, split = cranfield_layouts[1], cranfield_layouts[shards]
    queries = read_queries(cranfield / "queries.jsonl")
    qrels = read_qrels(cranfield / "qrels" / "test.tsv")
    judged = [q for q in qrels if q in queries]
    runs: dict[str, dict[str, dict[str, float]]] = {}
    rrf_checked = 0
    for query_id in judged:
        text = queries[query_id]
        assert_ranks_alike(one, split, text, 100, "bm25")
        assert_ranks_alike(one, split, text, 10, "dense")
        assert_ranks_alike(one, split, text, 10, "hybrid")
        if _ranks_are_unique(one, text):
            rrf_checked += 1
            assert_ranks_alike(one, split, text, 10, "hybrid", fusion_method="rrf")
        for name, layout in (("one", one), ("split", split)):
            for mode in ("bm25", "dense", "hybrid"):
                best: dict[str, float] = {}
                for passage_id, score in layout.ranked(text, 200, mode):
                    best.setdefault(passage_id.split("#")[0], score)
                runs.setdefault(f"{name}-{mode}", {})[query_id] = best
    assert rrf_checked >= len(judged) // 4, rrf_checked
    for mode in ("bm25", "dense", "hybrid"):
        judged_qrels = {q: qrels[q] for q in judged}
        expected = evaluate(judged_qrels, runs[f"one-{mode}"])
        assert evaluate(judged_qrels, runs[f"split-{mode}"]) == pytest.approx(expected, abs=1e-9)
