"""Search over gRPC against an in-process call of the same core, at 16 concurrent clients.

The in-process peer calls ``Collection.search`` from 16 threads; the gRPC side sends the same
queries from an asyncio client, 16 clients each with a connection of its own, to a real server
started as an operator would on this machine: ``--workers`` one per core, so a writer and read
workers share the port. The same server as one process is measured too. The ratio is what the
transport, serialisation and servicer cost, less what the extra processes win back. A BM25 run
over a small collection lasts a fraction of a second, so each side runs several times, the
sides taking turns, and the medians are compared (single runs moved the ratio between 0.65x
and 0.75x on one machine).
"""

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import cycle, islice
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from threadpoolctl import threadpool_limits

from bench.common import Row
from bench.load import LoadResult, run_load, summary
from bench.transport_floor import save_responses
from realm.app.corpus import wiki_summaries
from realm.app.supervisor import ServiceProcess
from realm.client import Document
from realm.retriever.collection import Collection
from realm.retriever.embedder import Encoder, load_encoder
from realm.retriever.response_budget import ResponseBudget
from realm.retriever.search import SearchMode, SearchQuery
from realm.retriever.servicer import search_response
from realm.retriever.settings import CollectionSettings, Limits
from realm.retriever.store import StoredDocument
from realm.v1 import common_pb2, retriever_pb2

CONCURRENCY = 16
ROUNDS = 5
WORKERS = os.cpu_count() or 1  # what docs/operations.md tells operators: one per core
_PROTO_MODE: dict[SearchMode, common_pb2.SearchMode.ValueType] = {
    "bm25": common_pb2.SEARCH_MODE_BM25,
    "hybrid": common_pb2.SEARCH_MODE_HYBRID,
}


def _in_process(collection: Collection, queries: list[str], mode: SearchMode) -> LoadResult:
    latencies: list[float] = []

    def one(text: str) -> None:
        started = time.perf_counter()
        collection.search(SearchQuery(text, 10, mode))
        latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, queries))
    seconds = time.perf_counter() - started
    return LoadResult(len(queries), seconds, {"OK": len(queries)}, latencies)


def wait_every_process_serving(target: str, timeout: float = 300.0) -> None:
    """Health over each of ``CONCURRENCY`` connections: the writer turns SERVING first, a
    worker once it has loaded the collection (it relays searches until then)."""
    deadline = time.monotonic() + timeout
    channels = [
        grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONCURRENCY)
    ]
    try:
        while time.monotonic() < deadline:
            statuses = {
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                .status
                for channel in channels
            }
            if statuses == {health_pb2.HealthCheckResponse.SERVING}:
                return
            time.sleep(0.2)
    finally:
        for channel in channels:
            channel.close()
    raise TimeoutError(f"not every process behind {target} was serving after {timeout:.0f}s")


def write_collection(data_dir: Path, documents: list[Document]) -> Encoder:
    """``documents`` as collection "bench" of a retriever's ``data_dir``, compacted into one
    generation as after ``realm ingest``; returns the encoder it was built with."""
    encoder = load_encoder(CollectionSettings().encoder)
    collection = Collection.create(
        "bench", data_dir / "collections" / "bench", CollectionSettings(), lambda _: encoder
    )
    collection.upsert([StoredDocument(d.id, d.text, d.title, dict(d.metadata)) for d in documents])
    collection.compact()
    collection.close()
    return encoder


def wait_workers_serving(server: ServiceProcess, timeout: float = 300.0) -> None:
    """Until every read worker has loaded the collection. A worker binds the port seconds
    after the writer serves (it starts, then imports torch), so health checked before that
    reaches the writer alone and passes; measured then, a side runs with fewer processes."""
    deadline = time.monotonic() + timeout
    while server.log().count("serving searches") < WORKERS - 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the read workers of {server.target} did not start")
        time.sleep(0.2)


def _remote(server: ServiceProcess, requests: list[retriever_pb2.SearchRequest]) -> LoadResult:
    return run_load(server.target, requests, CONCURRENCY, connections=CONCURRENCY)


def run(quick: bool) -> list[Row]:
    documents = wiki_summaries(800 if quick else 5_000)
    queries = [d.metadata.get("description") or d.title for d in documents]
    # A BM25 run of 400 requests took 0.2 s and read 10% slower than 4,000; 2,000 or more
    # last long enough. A hybrid search encodes its query (~10-25 ms of CPU): fewer of them
    # measure it as well.
    per_mode = {
        "bm25": list(islice(cycle(queries), 2_000 if quick else 4_000)),
        "hybrid": queries[: 100 if quick else 1_000],
    }
    rows: list[Row] = []
    bm25_run: tuple[list[retriever_pb2.SearchRequest], float] = ([], 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        encoder = write_collection(data_dir, documents)
        # Each server gets its own copy, so no two sides share open files or a writer.
        for copy in ("served", "single"):
            shutil.copytree(data_dir, Path(tmp) / copy)
        collection = Collection.open(data_dir / "collections" / "bench", lambda _: encoder)
        server = ServiceProcess(
            "retriever",
            Path(tmp) / "retriever.log",
            "--data-dir",
            str(Path(tmp) / "served"),
            "--workers",
            str(WORKERS),
        )
        single = ServiceProcess(
            "retriever", Path(tmp) / "single.log", "--data-dir", str(Path(tmp) / "single")
        )
        with contextlib.ExitStack() as running:
            running.enter_context(threadpool_limits(1, user_api="blas"))  # as the server does
            for process in (server, single):  # both start at once; each loads the model
                process.start()
                running.callback(process.stop)
            for process in (server, single):
                process.wait_serving()
            wait_every_process_serving(server.target)
            wait_workers_serving(server)
            for mode, proto_mode in _PROTO_MODE.items():
                requests = [
                    retriever_pb2.SearchRequest(collection="bench", query=q, k=10, mode=proto_mode)
                    for q in per_mode[mode]
                ]
                _in_process(collection, per_mode[mode][:20], mode)  # warm-up
                for target in (server, single):
                    _remote(target, requests[:20])
                sides: list[Callable[[], LoadResult]] = [
                    partial(_in_process, collection, per_mode[mode], mode),
                    partial(_remote, server, requests),
                ]
                if mode == "bm25":
                    sides.append(partial(_remote, single, requests))
                local, remote, *one_process = _medians(sides)
                if mode == "bm25":
                    bm25_run = (requests, local.qps)
                note = (
                    f"gRPC: median of {ROUNDS} runs: {summary(remote)}; in-process: p50 "
                    f"{statistics.median(local.latencies_ms):.1f} ms. The load generator shares "
                    "the cores with the server; the in-process peer pays no client"
                )
                rows.append(
                    Row(
                        f"{mode} search, {CONCURRENCY} concurrent clients, {len(documents):,} "
                        f"docs, --workers {WORKERS}",
                        remote.qps,
                        "in-process Collection.search",
                        local.qps,
                        "q/s",
                        0.75,
                        note=note,
                    )
                )
                rows.extend(
                    Row(
                        f"{mode} search, {CONCURRENCY} concurrent clients, {len(documents):,} "
                        "docs, one process",
                        alone.qps,
                        "in-process Collection.search",
                        local.qps,
                        "q/s",
                        None,
                        note=f"median of {ROUNDS} runs: {summary(alone)}; the in-process figure "
                        "is the row above's",
                    )
                    for alone in one_process
                )
        rows.append(_floor(collection, *bm25_run, Path(tmp), len(documents)))
        collection.close()
    return rows


def _floor(
    collection: Collection,
    requests: list[retriever_pb2.SearchRequest],
    local_qps: float,
    tmp: Path,
    n_documents: int,
) -> Row:
    """The BM25 row's requests against a server that answers each from a prepared response:
    the same bytes on the wire and the same serving stack, but no search."""
    unique = list({r.query: r for r in requests}.values())
    responses = tmp / "prepared.bin"
    save_responses(
        responses,
        unique,
        [
            search_response(collection, SearchQuery(r.query, r.k, "bm25"), ResponseBudget(Limits()))
            for r in unique
        ],
    )
    with ServiceProcess(
        "retriever",
        tmp / "floor.log",
        "--responses",
        str(responses),
        module="bench.transport_floor",
    ) as server:
        _remote(server, requests[:20])  # warm-up
        runs = sorted((_remote(server, requests) for _ in range(ROUNDS)), key=lambda run: run.qps)
    floor = runs[ROUNDS // 2]
    return Row(
        f"bm25 transport floor: prepared answers, no search, {CONCURRENCY} concurrent clients, "
        f"{n_documents:,} docs",
        floor.qps,
        "in-process Collection.search",
        local_qps,
        "q/s",
        None,
        note=f"median of {ROUNDS} runs: {summary(floor)}. The same requests and response bytes "
        "through the same server stack, with no search: what grpc, the interceptor and the load "
        "generator leave on this machine; the in-process figure is the bm25 row's",
    )


def _medians(sides: list[Callable[[], LoadResult]], rounds: int = ROUNDS) -> list[LoadResult]:
    """Each side's median run by queries/s over ``rounds`` rounds; the side that goes first
    changes every round, so a drift in the machine's speed falls on all of them."""
    runs: list[list[LoadResult]] = [[] for _ in sides]
    for round_number in range(rounds):
        for offset in range(len(sides)):
            index = (round_number + offset) % len(sides)
            runs[index].append(sides[index]())
    return [sorted(side, key=lambda run: run.qps)[rounds // 2] for side in runs]
