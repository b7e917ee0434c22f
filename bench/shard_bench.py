"""Sharded search: what the coordinator's phases cost against one index, in one process and
across processes.

In one process: the packaged Wikipedia summaries as one collection and over 2 and 4 shards
(real collections on disk, each document in the shard ``shard_of`` names), searched with their
descriptions as queries: one index through ``Collection.search``, the shards through
``Coordinator.search`` (statistics, rank, merge, hydrate) on one event loop. There is no
network hop, so this is the compute part of fan-out: what each extra shard adds (its
statistics, its own top ``depth`` per side, a hydrate call) and what the merge costs, at the
same total size. Vectors come from a hashing encoder (each text's blake2b seeds a random unit
vector of the default model's 384 dimensions): search cost depends on the vectors' count and
dimension, not their meaning, and a real encoder would spend minutes encoding three copies.

Across processes: ``realm serve retriever`` processes on loopback, one holding the whole
corpus and a shard, the other the second shard, the coordinator in this process calling them
through ``ShardService`` (three round trips, both shards at once). The peer is ``Search`` on
the whole collection through the client library (one round trip). The real encoder makes the
vectors (the servers' default, int8 ONNX; this process loads the same export for the query).
The processes share this machine's cores, so this measures the hops' cost, not the
parallelism that separate machines would give.
"""

import asyncio
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from grpc import aio
from threadpoolctl import threadpool_limits

from bench.cluster_bench import retriever_processes
from bench.common import Row
from realm.app.corpus import wiki_summaries
from realm.client import Document, RetrieverClient
from realm.retriever.analyzer import Analyzer
from realm.retriever.collection import Collection
from realm.retriever.embedder import DEFAULT_MODEL, EncoderSpec, load_encoder
from realm.retriever.remote_shard import RemoteShard
from realm.retriever.search import Hit, SearchMode, SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.sharding import Coordinator, LocalShard, shard_of
from realm.retriever.store import StoredDocument
from realm.retriever.topk import FloatArray
from realm.v1 import shard_pb2_grpc

DIMENSION = 384
SHARD_COUNTS = (2, 4)
MODES: tuple[SearchMode, ...] = ("bm25", "dense", "hybrid")
WHOLE, PART = "bench-whole", "bench-part"


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


def _remote_rows(root: Path, corpus: list[Document], asked: list[str]) -> list[Row]:
    """One index over gRPC against the coordinator over two shards on two servers."""
    rows: list[Row] = []
    with retriever_processes(root / "servers", 2) as servers:
        targets = [s.target for s in servers]
        with RetrieverClient(targets[0], timeout=600) as client:
            client.create_collection(WHOLE)
            client.upsert(WHOLE, corpus)
        for index, target in enumerate(targets):
            with RetrieverClient(target, timeout=600) as client:
                client.create_collection(PART)
                client.upsert(PART, [d for d in corpus if shard_of(d.id, 2) == index])
        encoder = load_encoder(EncoderSpec(DEFAULT_MODEL, "onnx"))  # the servers' export
        coordinator = Coordinator(Analyzer("en"), encoder, CollectionSettings(language="en").fusion)
        for mode in MODES:
            with RetrieverClient(targets[0], timeout=60) as client:

                def one_index(text: str, mode: SearchMode = mode) -> object:
                    return client.search(WHOLE, text, k=10, mode=mode)

                single = _remote_milliseconds(one_index, asked)
            sharded = asyncio.run(_coordinated_milliseconds(coordinator, targets, asked, mode))
            rows.append(
                Row(
                    f"{mode} top-10 latency, 2 shards on 2 servers over gRPC "
                    f"({len(corpus):,} documents)",
                    sharded,
                    "Search on one index over gRPC",
                    single,
                    "ms",
                    None,
                    higher_is_better=False,
                )
            )
    return rows


def _remote_milliseconds(search: Callable[[str], object], asked: list[str]) -> float:
    for text in asked[:20]:
        search(text)
    started = time.perf_counter()
    for text in asked:
        search(text)
    return (time.perf_counter() - started) / len(asked) * 1000


async def _coordinated_milliseconds(
    coordinator: Coordinator, targets: list[str], asked: list[str], mode: SearchMode
) -> float:
    channels = [aio.insecure_channel(t) for t in targets]
    shards = [
        [RemoteShard(t, shard_pb2_grpc.ShardServiceStub(c), PART, 60.0)]
        for t, c in zip(targets, channels, strict=True)
    ]
    try:
        for text in asked[:20]:
            await coordinator.search(shards, SearchQuery(text, 10, mode))
        started = time.perf_counter()
        for text in asked:
            await coordinator.search(shards, SearchQuery(text, 10, mode))
        return (time.perf_counter() - started) / len(asked) * 1000
    finally:
        for channel in channels:
            await channel.close(None)


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
        # Single-threaded BLAS, as the server runs it (realm.retriever.server): each shard's
        # dense rank runs in a thread of its own, and 4 of them each spreading a matrix product
        # over the 2 cores took 7.4 ms where one index took 1.3.
        with threadpool_limits(1, user_api="blas"):
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
        rows.extend(_remote_rows(root, corpus, asked))
    return rows
