"""What Prometheus metrics cost a search: the gRPC BM25 search load against two identical
retrievers (``--workers`` one per core), one with ``--metrics-port`` and scraped every second
(Prometheus's default is every 15 s), one without. Both record the same figures in memory (the
recording is always on); what metrics add is the endpoints (the writer's, and each read
worker's on loopback) and the scrapes, at which the writer fetches and sums the workers'
figures. The sides take turns, as in ``bench grpc``, and the medians compare.

A second row weighs the recording itself, which runs whether metrics are served or not: the
observations one search call makes, timed in a loop, against the server's CPU time per call.
"""

import contextlib
import shutil
import tempfile
import threading
import timeit
import urllib.request
from functools import partial
from itertools import cycle, islice
from pathlib import Path

from bench.common import Row
from bench.grpc_bench import (
    CONCURRENCY,
    WORKERS,
    _medians,
    _remote,
    wait_every_process_serving,
    wait_workers_serving,
    write_collection,
)
from bench.load import summary
from realm.app.corpus import wiki_summaries
from realm.app.supervisor import ServiceProcess, free_port
from realm.metrics import for_method
from realm.retriever.metrics import SEARCH_BY_MODE
from realm.v1 import common_pb2, retriever_pb2

SCRAPE_SECONDS = 1.0
# Two servers in turn on 2 cores differ by a few percent from run to run, as much as the effect
# measured: more rounds than bench grpc's five.
ROUNDS = 9


def _scrape_every_second(port: int, stop: threading.Event) -> None:
    while not stop.wait(SCRAPE_SECONDS):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            page.read()


def _recording_microseconds() -> float:
    """The observations of one search call: the RPC's start, end and latency, and the search's
    latency by mode."""
    method = for_method("/realm.v1.RetrieverService/Search")
    search = SEARCH_BY_MODE["bm25"]

    def one_call() -> None:
        method.started()
        search.observe(0.0004)
        method.ended()
        method.finished("OK", 0.0006)

    return min(timeit.repeat(one_call, number=20_000, repeat=5)) / 20_000 * 1e6


def run(quick: bool) -> list[Row]:
    documents = wiki_summaries(800 if quick else 5_000)
    queries = [d.metadata.get("description") or d.title for d in documents]
    requests = [
        retriever_pb2.SearchRequest(
            collection="bench", query=q, k=10, mode=common_pb2.SEARCH_MODE_BM25
        )
        for q in islice(cycle(queries), 2_000 if quick else 4_000)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        write_collection(data_dir, documents)
        for copy in ("on", "off"):
            shutil.copytree(data_dir, Path(tmp) / copy)
        metrics_port = free_port()
        servers = {
            side: ServiceProcess(
                "retriever",
                Path(tmp) / f"{side}.log",
                "--data-dir",
                str(Path(tmp) / side),
                "--workers",
                str(WORKERS),
                *(("--metrics-port", str(metrics_port)) if side == "on" else ()),
            )
            for side in ("on", "off")
        }
        stop = threading.Event()
        with contextlib.ExitStack() as running:
            for process in servers.values():
                process.start()
                running.callback(process.stop)
            for process in servers.values():
                process.wait_serving()
                wait_every_process_serving(process.target)
                wait_workers_serving(process)
                _remote(process, requests[:20])  # warm-up
            scraper = threading.Thread(target=_scrape_every_second, args=(metrics_port, stop))
            scraper.start()
            running.callback(scraper.join)
            running.callback(stop.set)
            on, off = _medians(
                [partial(_remote, servers[s], requests) for s in ("on", "off")], ROUNDS
            )
    per_call_cpu_us = WORKERS * 1e6 / off.qps  # every core busy serving or loading
    recording_us = _recording_microseconds()
    return [
        Row(
            f"bm25 search, {CONCURRENCY} concurrent clients, {len(documents):,} docs, "
            f"--workers {WORKERS}, metrics served and scraped every {SCRAPE_SECONDS:.0f} s",
            on.qps,
            "the same server without --metrics-port",
            off.qps,
            "q/s",
            0.97,
            note=f"median of {ROUNDS} runs each, sides taking turns: on {summary(on)}; "
            f"off {summary(off)}",
        ),
        Row(
            "the observations one search call records (always on), per call",
            recording_us,
            "the machine's time per search call over gRPC (cores / q/s without metrics)",
            per_call_cpu_us,
            "us",
            None,
            higher_is_better=False,
            note=f"{recording_us / per_call_cpu_us:.1%} of a call; measured with timeit in "
            "one process (values in memory, as the writer keeps them)",
        ),
    ]
