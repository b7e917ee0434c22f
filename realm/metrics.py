"""Prometheus metrics: the RPC layer's families and the HTTP endpoint that serves every family.

Names follow vLLM's and TEI's style: ``realm_`` first, the unit in the name, ``_total`` on
counters. Each service declares its own families next to its code (``realm.retriever.metrics``,
``realm.generator.metrics``); figures that already exist as state (index sizes, engine counters)
are read when Prometheus scrapes, by collectors, so the request path pays nothing for them.

A retriever with read workers is several processes behind one port. Every process keeps its
values in memory; when Prometheus scrapes the writer, the writer reads each worker's figures
from the worker's own loopback endpoint and adds them to its own, sample by sample.
prometheus_client's multiprocess mode (values in shared files) was measured first: it cost
searches 5-10% of their throughput (docs/benchmarks.md, "metrics"); this costs them nothing.
"""

import json
import logging
import os
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from realm.files import write_json_atomic

_LOGGER = logging.getLogger(__name__)
_WORKER_SCRAPE_TIMEOUT_S = 2.0

# Latency buckets from a cached BM25 search (well under a millisecond) to a long generation.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

RPC_HANDLED = Counter(
    "realm_rpc_requests_total",
    "Calls finished, by gRPC service, method and status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "realm_rpc_duration_seconds",
    "Time from a call's arrival to its last response message, by method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_IN_PROGRESS = Gauge(
    "realm_rpc_in_progress",
    "Calls admitted and not yet finished (the server's queue depth), by method.",
    ["service", "method"],
)
RPC_REFUSED = Counter(
    "realm_rpc_refused_total",
    "Calls refused at admission, by method and reason: 'not_ready' (loading or stopping), "
    "'server_full' (max_concurrent_rpcs) or 'method_full' (the method's own cap). Admitted "
    "calls are realm_rpc_requests_total less these.",
    ["service", "method", "reason"],
)


RELAYED_KEY = "x-realm-relayed"  # metadata of a call a read worker relays to its writer


class MethodMetrics:
    """The RPC families' children for one method, made once: ``labels()`` costs as much as the
    observation itself, and the interceptor records every call. A call a read worker relays to
    its writer is not ``counted`` again there: the worker counted it."""

    def __init__(self, full_method: str, counted: bool = True) -> None:
        # "/realm.v1.RetrieverService/Search" -> service and method
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.counted = counted
        self._labels = (service, method)
        self._duration = RPC_DURATION.labels(service, method)
        self._in_progress = RPC_IN_PROGRESS.labels(service, method)
        self._handled: dict[str, Counter] = {}

    def started(self) -> None:
        if self.counted:
            self._in_progress.inc()

    def ended(self) -> None:
        if self.counted:
            self._in_progress.dec()

    def finished(self, code: str, seconds: float) -> None:
        if not self.counted:
            return
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = RPC_HANDLED.labels(*self._labels, code)
        counter.inc()
        self._duration.observe(seconds)

    def refused(self, reason: str) -> None:
        if self.counted:
            RPC_REFUSED.labels(*self._labels, reason).inc()


_BY_METHOD: dict[tuple[str, bool], MethodMetrics] = {}


def for_method(full_method: str, counted: bool = True) -> MethodMetrics:
    found = _BY_METHOD.get((full_method, counted))
    if found is None:
        found = _BY_METHOD[full_method, counted] = MethodMetrics(full_method, counted)
    return found


class WorkerEndpoint:
    """A read worker's figures, for its writer only: an HTTP server on a loopback port the OS
    picks, announced by a file ``<pid>.json`` in the writer's ``directory``."""

    def __init__(self, directory: Path) -> None:
        server, thread = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self._announcement = directory / f"{os.getpid()}.json"
        write_json_atomic(self._announcement, {"port": server.server_port})

    def close(self) -> None:
        self._announcement.unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()


def worker_gone(directory: Path, pid: int) -> None:
    """Forgets a dead worker's endpoint. Its counts leave the sums: Prometheus's ``rate`` reads
    the drop as a counter reset, as it does for any restarted process."""
    (directory / f"{pid}.json").unlink(missing_ok=True)


def _workers_families(directory: Path) -> Iterator[Metric]:
    """The ``realm_`` families of every worker announced in ``directory`` (process and runtime
    families are per process: summing them means nothing)."""
    for announcement in sorted(directory.glob("*.json")):
        try:
            port = int(json.loads(announcement.read_text())["port"])
            address = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(address, timeout=_WORKER_SCRAPE_TIMEOUT_S) as page:
                text = page.read().decode()
        except (OSError, ValueError, KeyError) as error:
            # A worker that just died or is starting: its figures are missing from this scrape.
            _LOGGER.warning("metrics of worker %s not read: %s", announcement.stem, error)
            continue
        for family in text_string_to_metric_families(text):
            if family.name.startswith("realm_"):
                yield family


class _ThisProcessAndWorkers(Collector):
    """This process's families, with the read workers' values added sample by sample.
    ``_created`` samples are left out: a sum of them means nothing."""

    def __init__(self, workers: Path | None) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        if self._workers is None:
            yield from REGISTRY.collect()
            return
        merged: dict[str, Metric] = {}
        totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for family in (*REGISTRY.collect(), *_workers_families(self._workers)):
            if family.name.endswith("_created"):
                continue
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                totals[family.name] = {}
            sums = totals[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                sums[key] = sums.get(key, 0.0) + sample.value
        for name, family in merged.items():
            for (sample_name, labels), value in totals[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


class MetricsEndpoint:
    """The HTTP server of ``/metrics``: this process's families, plus those of the read workers
    announced in ``workers``, plus ``collectors`` that read the service's state at scrape
    time."""

    def __init__(
        self,
        host: str,
        port: int,
        collectors: Iterable[Collector] = (),
        workers: Path | None = None,
    ) -> None:
        registry = CollectorRegistry()
        registry.register(_ThisProcessAndWorkers(workers))
        for collector in collectors:
            registry.register(collector)
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port = int(server.server_port)
        _LOGGER.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
