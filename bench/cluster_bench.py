"""Cluster mode: what a write costs through NATS JetStream, how long until every replica
serves it, and what more replicas add to search throughput.

Everything runs as real processes on this machine: ``realm serve retriever`` replicas and
``nats-server`` (one server with streams kept once, R1, for the cost of a write; three servers
with streams kept three times, R3, for the production shape). Writes go through the client
library's ``upsert``; replication lag is the time from a write's acknowledgement until every
other replica answers a search carrying its sequence (``min_sequence``: the replica waits for
the record, so the wait is the lag). On a machine with few cores the replicas share them: more
replicas there measure overhead, not the capacity that more machines would add. The sharded
rows (``cluster_shards``) search one corpus as 1, 2 and 4 shards over two replicas.
"""

import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.bm25_bench import zipfian
from bench.cluster_shards import HOLDINGS, sharded_rows
from bench.common import Row
from bench.nats_cluster import NatsCluster
from bench.search_load import search_qps
from realm.app.supervisor import ServiceProcess
from realm.client import Document, RetrieverClient

BATCH = 20
COLLECTION = "bench"


@contextmanager
def retriever_processes(
    root: Path, count: int, *extra: str, each: Sequence[Sequence[str]] = ()
) -> Iterator[list[ServiceProcess]]:
    """``count`` retriever processes (started together: their model loads overlap), process
    ``i`` with ``extra`` and ``each[i]`` as its arguments."""
    with ExitStack() as stack:
        processes = [
            ServiceProcess(
                "retriever",
                root / f"replica-{i}.log",
                "--data-dir",
                str(root / f"replica-{i}"),
                *extra,
                *(each[i] if each else ()),
            )
            for i in range(count)
        ]
        for process in processes:
            process.start()
            stack.callback(process.stop)
        for process in processes:
            process.wait_serving()
        yield processes


def _documents(texts: list[str], first: int) -> list[Document]:
    return [Document(f"d{first + i}", text) for i, text in enumerate(texts)]


def _write_rate(targets: list[str], texts: list[str]) -> float:
    """Documents per second through ``upsert`` in batches of ``BATCH``, one writer."""
    with RetrieverClient(targets, timeout=120) as client:
        client.create_collection(COLLECTION)
        started = time.perf_counter()
        for offset in range(0, len(texts), BATCH):
            client.upsert(COLLECTION, _documents(texts[offset : offset + BATCH], offset))
        return len(texts) / (time.perf_counter() - started)


def _lag_ms(writer: str, others: list[str], texts: list[str]) -> tuple[list[float], list[float]]:
    """Per write: acknowledgement time, and time from acknowledgement until every replica in
    ``others`` serves it."""
    acks, lags = [], []
    with ExitStack() as stack:
        client = stack.enter_context(RetrieverClient(writer, timeout=60))
        readers = [stack.enter_context(RetrieverClient(t, timeout=60)) for t in others]
        for i, text in enumerate(texts):
            started = time.perf_counter()
            summary = client.upsert(COLLECTION, _documents([text], 10_000_000 + i))
            acked = time.perf_counter()
            for reader in readers:
                reader.session.wrote(COLLECTION, summary.sequence)
                reader.search(COLLECTION, "lag", k=1, mode="bm25")
            lags.append((time.perf_counter() - acked) * 1000)
            acks.append((acked - started) * 1000)
    return acks, lags


def _percentile(values: list[float], share: float) -> float:
    return sorted(values)[min(len(values) - 1, int(share * len(values)))]


def run(quick: bool) -> list[Row]:
    corpus = zipfian(300 if quick else 2000, queries=200, seed=7)
    texts = [" ".join(words) for words in corpus.documents]
    queries = [" ".join(words) for words in corpus.queries]
    lag_writes = 30 if quick else 200
    search_seconds = 3.0 if quick else 10.0
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        with retriever_processes(root / "single", 1) as (single,):
            single_rate = _write_rate([single.target], texts)
            single_acks, _ = _lag_ms(single.target, [], texts[:lag_writes])
        with (
            NatsCluster(root / "nats-r1", 1) as nats,
            retriever_processes(root / "r1", 1, "--nats", nats.urls, "--nats-replicas", "1") as (
                replica,
            ),
        ):
            r1_rate = _write_rate([replica.target], texts)
        with (
            NatsCluster(root / "nats-r3", 3) as nats,
            retriever_processes(
                root / "r3", 3, "--nats", nats.urls, "--nats-replicas", "3"
            ) as replicas,
        ):
            targets = [r.target for r in replicas]
            r3_rate = _write_rate(targets, texts)
            acks, lags = _lag_ms(targets[0], targets[1:], texts[:lag_writes])
            qps = [
                search_qps(targets[:count], COLLECTION, queries, search_seconds, threads=4)
                for count in (1, 2, 3)
            ]
        with (
            NatsCluster(root / "nats-shards", 1) as nats,
            retriever_processes(
                root / "shards",
                len(HOLDINGS),
                "--nats",
                nats.urls,
                "--nats-replicas",
                "1",
                each=[("--serve-shards", holding) for holding in HOLDINGS],
            ) as holders,
        ):
            rows += sharded_rows(holders[0].target, texts, queries, quick)
    rows += [
        Row(
            "write docs/s, cluster (1 replica, NATS R1)",
            r1_rate,
            "single node",
            single_rate,
            "docs/s",
            None,
            note=f"batches of {BATCH}; encoding included; with one replica the lag is 0 "
            "(a write is acknowledged once applied there)",
        ),
        Row(
            "write docs/s, 3 replicas (NATS R3, 3 servers)",
            r3_rate,
            "single node",
            single_rate,
            "docs/s",
            None,
        ),
        Row(
            "write ack p50, 3 replicas",
            statistics.median(acks),
            "single node",
            statistics.median(single_acks),
            "ms",
            None,
            higher_is_better=False,
            note="one document per write",
        ),
        Row(
            "replication lag p50 (ack → on every replica)",
            statistics.median(lags),
            "write ack p50",
            statistics.median(acks),
            "ms",
            None,
            higher_is_better=False,
        ),
        Row(
            "replication lag p99",
            _percentile(lags, 0.99),
            "write ack p99",
            _percentile(acks, 0.99),
            "ms",
            None,
            higher_is_better=False,
        ),
        Row(
            "search QPS, 2 replicas",
            qps[1],
            "1 replica",
            qps[0],
            "q/s",
            None,
            note="BM25, 4 client threads; the replicas, 3 NATS servers and the client share this "
            "machine's cores, so more replicas add no capacity here (runs vary by ~20%); on "
            "more machines each replica adds its own",
        ),
        Row("search QPS, 3 replicas", qps[2], "1 replica", qps[0], "q/s", None),
    ]
    return rows
