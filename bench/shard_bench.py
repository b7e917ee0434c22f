"""Sharded search in one process: what the coordinator's phases cost against one index.

The packaged Wikipedia summaries as one collection and over 2 and 4 shards (real collections
on disk, each document in the shard ``shard_of`` names), searched with their descriptions as
queries: one index through ``Collection.search``, the shards through ``Coordinator.search``
(statistics, rank, merge, hydrate) on one event loop, in-process shards answering one after
another. There is no network
hop, so this is the compute part of fan-out: what each extra shard adds (its statistics, its
own top ``depth`` per side, a hydrate call) and what the merge costs, at the same total size.

Vectors come from a hashing encoder (each text's blake2b seeds a random unit vector of the
default model's 384 dimensions): search cost depends on the vectors' count and dimension, not
their meaning, and a real encoder would spend minutes encoding three copies of the corpus.
Queries are encoded once before timing, for every layout alike.
"""

import asyncio
import hashlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import Row
from realm.app.corpus import wiki_summaries
from realm.retriever.collection import Collection
from realm.retriever.search import Hit, SearchMode, SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.sharding import Coordinator, LocalShard, shard_of
from realm.retriever.store import StoredDocument
from realm.retriever.topk import FloatArray

DIMENSION = 384
SHARD_COUNTS = (2, 4)
MODES: tuple[SearchMode, ...] = ("bm25", "dense", "hybrid")


class HashingEncoder:
    """Deterministic random unit vectors: the shape of a real encoder's output, at no cost."""

    model_id = "hashing-bench"
    dimension = DIMENSION
    fingerprint = "hashing-bench-384"

    def encode(self, texts: list[str]) -> FloatArray:
        vectors = np.stack([self._vector(t) for t in texts]) if texts else np.empty((0, DIMENSION))
        return vectors.astype(np.float32)

    def encode_queries(self, texts: list[str]) -> FloatArray:
        return self.encode(texts)

    @staticmethod
    def _vector(text: str) -> FloatArray:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
        return vector / np.linalg.norm(vector)


class Layout:
    """One collection, or several shards searched through the coordinator."""

    def __init__(self, root: Path, shards: int, documents: Sequence[StoredDocument]) -> None:
        encoder = HashingEncoder()
        settings = CollectionSettings(language="en")
        self.collections = [
            Collection.create("bench", root / f"{shards}-{i}", settings, lambda _: encoder, 10**9)
            for i in range(shards)
        ]
        for index, collection in enumerate(self.collections):
            collection.upsert([d for d in documents if shard_of(d.doc_id, shards) == index])
            collection.compact()  # served from a sealed generation, as a settled index is
        first = self.collections[0]
        self.coordinator = Coordinator(first.analyzer, encoder, first.settings.fusion)
        self.loop = asyncio.new_event_loop()  # one for every query, as a server has

    @property
    def passages(self) -> int:
        return sum(c.snapshot().passages for c in self.collections)

    def search(self, query: SearchQuery) -> list[Hit]:
        if len(self.collections) == 1:
            return self.collections[0].search(query)
        shards = [LocalShard(c.searcher, c.snapshot()) for c in self.collections]
        answer = self.coordinator.search([[s] for s in shards], query)
        return self.loop.run_until_complete(answer).hits

    def close(self) -> None:
        self.loop.close()
        for collection in self.collections:
            collection.close()


def _milliseconds_per_query(layout: Layout, queries: list[SearchQuery], repeats: int) -> float:
    """The median over ``repeats`` passes of the mean time per query, after a warm-up pass."""
    for query in queries:
        layout.search(query)
    passes = []
    for _ in range(repeats):
        started = time.perf_counter()
        for query in queries:
            layout.search(query)
        passes.append((time.perf_counter() - started) / len(queries) * 1000)
    return statistics.median(passes)


def run(quick: bool) -> list[Row]:
    corpus = wiki_summaries(2_000 if quick else 0)
    documents = [StoredDocument(d.id, d.text, d.title) for d in corpus]
    asked = [d.metadata["description"] for d in corpus if d.metadata.get("description")]
    asked = asked[: 100 if quick else 300]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="realm-shard-bench-") as scratch:
        root = Path(scratch)
        one = Layout(root, 1, documents)
        layouts = {n: Layout(root, n, documents) for n in SHARD_COUNTS}
        for mode in MODES:
            queries = [SearchQuery(text, 10, mode) for text in asked]
            single = _milliseconds_per_query(one, queries, 3)
            for shards, layout in layouts.items():
                rows.append(
                    Row(
                        f"{mode} top-10 latency, {shards} shards in one process "
                        f"({layout.passages:,} passages)",
                        _milliseconds_per_query(layout, queries, 3),
                        "one index",
                        single,
                        "ms",
                        None,
                        higher_is_better=False,
                    )
                )
        for layout in (one, *layouts.values()):
            layout.close()
    return rows
