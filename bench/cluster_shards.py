"""The sharded rows of ``python -m bench cluster``: one collection of the same documents as 1,
2 and 4 shards over two replicas, searched through one of them, which coordinates.

Replica A holds shards 0 and 2, replica B shards 1 and 3: a 2-shard collection has a shard on
each (every search one hop), a 4-shard one two on each. The 1-shard collection is an ordinary
one that both hold: the single index every sharded figure is compared with. On a machine with
few cores both replicas, NATS and the client share them, so the shards' work adds up here where
on separate machines it would overlap: the figures are the cost of coordinating, an upper
bound on the latency it adds.

The cost model separates the two costs the medians show: going over the network at all (the
hop: a search of 2 shards makes three round trips to the other replica where one index makes
none; two when the shard's statistics are cached) and each further shard (its calls, its
candidates to merge, its share of the work):
per_shard = (t4 - t2) / 2 and hop = t2 - t1 - per_shard, so t(n) = t1 + hop + per_shard x (n - 1)
for n >= 2, extrapolated to 16 and 64 shards.
"""

import statistics
import time

from bench.common import Row
from bench.search_load import search_qps
from realm.client import Document, Mode, RetrieverClient

SHARD_COUNTS = (1, 2, 4)
EXTRAPOLATED = (16, 64)
# --serve-shards of replicas A and B.
HOLDINGS = ("0,2", "1,3")
INGEST_BATCH = 200


def _collection(shards: int) -> str:
    return f"shards-{shards}"


def _latencies_ms(target: str, collection: str, queries: list[str], mode: Mode) -> list[float]:
    with RetrieverClient(target, timeout=60, consistency="eventual") as client:
        client.search(collection, queries[0], k=10, mode=mode)  # warm the connection
        latencies = []
        for query in queries:
            started = time.perf_counter()
            client.search(collection, query, k=10, mode=mode)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def _costs(medians: dict[int, float]) -> tuple[float, float]:
    """``(hop, per_shard)`` in ms from the medians at 1, 2 and 4 shards (module docstring)."""
    per_shard = (medians[4] - medians[2]) / 2
    return medians[2] - medians[1] - per_shard, per_shard


def sharded_rows(coordinator: str, texts: list[str], queries: list[str], quick: bool) -> list[Row]:
    """The rows, measured through ``coordinator`` (replica A of two started with
    ``HOLDINGS``)."""
    documents = [Document(f"d{i}", text) for i, text in enumerate(texts)]
    seconds = 3.0 if quick else 10.0
    p50: dict[Mode, dict[int, float]] = {"bm25": {}, "hybrid": {}}
    p99: dict[int, float] = {}
    qps: dict[int, float] = {}
    with RetrieverClient(coordinator, timeout=300) as client:
        for shards in SHARD_COUNTS:
            client.create_collection(_collection(shards), shards=shards)
            for start in range(0, len(documents), INGEST_BATCH):
                client.upsert(_collection(shards), documents[start : start + INGEST_BATCH])
    modes: tuple[Mode, ...] = ("bm25", "hybrid")
    for shards in SHARD_COUNTS:
        for mode in modes:
            measured = _latencies_ms(coordinator, _collection(shards), queries, mode)
            p50[mode][shards] = statistics.median(measured)
            if mode == "bm25":
                p99[shards] = sorted(measured)[int(0.99 * (len(measured) - 1))]
        qps[shards] = search_qps([coordinator], _collection(shards), queries, seconds, threads=4)
    size = f"{len(texts):,} documents in all"
    rows: list[Row] = []
    for shards in SHARD_COUNTS[1:]:
        rows += [
            Row(
                f"sharded search p50, {shards} shards (BM25)",
                p50["bm25"][shards],
                "one index",
                p50["bm25"][1],
                "ms",
                None,
                higher_is_better=False,
                note=f"{size}; 2 replicas, each holding half the shards; k=10",
            ),
            Row(
                f"sharded search p99, {shards} shards (BM25)",
                p99[shards],
                "one index",
                p99[1],
                "ms",
                None,
                higher_is_better=False,
            ),
            Row(
                f"sharded search p50, {shards} shards (hybrid)",
                p50["hybrid"][shards],
                "one index",
                p50["hybrid"][1],
                "ms",
                None,
                higher_is_better=False,
            ),
            Row(
                f"sharded search QPS, {shards} shards (BM25)",
                qps[shards],
                "one index",
                qps[1],
                "q/s",
                None,
                note="4 client threads, all coordinated by one replica",
            ),
        ]
    one = p50["bm25"][1]
    hop, per_shard = _costs(p50["bm25"])
    for shards in EXTRAPOLATED:
        rows.append(
            Row(
                f"cost model: BM25 p50 at {shards} shards",
                one + hop + per_shard * (shards - 1),
                "one index (measured)",
                one,
                "ms",
                None,
                higher_is_better=False,
                note=f"extrapolated: one index's {one:.2f} ms + {hop:.2f} ms for the hop (the "
                f"round trips to another replica) + {per_shard:.2f} ms per shard past the first, "
                "measured at 1, 2 and 4 shards on this machine (the shards' work serialised on "
                "its cores)",
            )
        )
    return rows
