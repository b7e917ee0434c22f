"""Metrics and traces of real processes: a real Prometheus server scrapes both services while
traffic flows, and an OTLP receiver in this process collects the spans of client, generator and
retriever (each its own process) and finds one trace across them.

The Prometheus server is Debian's ``prometheus`` package (``make install`` installs it); the
test fails rather than skips under CI when it is missing.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from realm import tracing
from realm.app.supervisor import free_port
from realm.client import GeneratorClient, RetrieverClient
from tests.conftest import fixture_documents
from tests.servers import REPO, GeneratorProcess, RetrieverProcess

COLLECTION = "observed"
SEARCHES = 12  # per mode
SERVER = OtlpSpan.SPAN_KIND_SERVER
RULES = REPO / "deploy/prometheus/realm-alerts.yaml"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int


class SpanReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: what a collector would be, on a loopback port."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def Export(  # noqa: N802 -- the OTLP service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        Span(
                            attributes.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class Observed:
    retriever: RetrieverProcess
    generator: GeneratorProcess
    retriever_metrics: int
    generator_metrics: int
    receiver: SpanReceiver
    otel_env: dict[str, str]
    asks: int = 0  # answers asked so far: each made one hybrid search of the retriever


def _prometheus_program(name: str) -> str:
    """``prometheus`` or ``promtool``, from Debian's prometheus package."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (make install puts Debian's prometheus in place)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """Retriever (with a read worker) and generator, metrics on, exporting spans here."""
    receiver = SpanReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    otel_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second
    }
    workdir = tmp_path_factory.mktemp("observed")
    retriever_metrics, generator_metrics = free_port(), free_port()
    with (
        RetrieverProcess(
            workdir / "data",
            "--workers",
            "2",
            "--metrics-port",
            str(retriever_metrics),
            env=otel_env,
        ) as retriever,
        GeneratorProcess(
            workdir, retriever.target, "--metrics-port", str(generator_metrics), env=otel_env
        ) as generator,
    ):
        yield Observed(
            retriever, generator, retriever_metrics, generator_metrics, receiver, otel_env
        )
    server.stop(0)


@pytest.fixture(scope="module")
def traffic(observed: Observed) -> None:
    """Writes, searches in every mode, and answers, through the client library. Each round of
    searches has a connection of its own, which the kernel gives the writer or the read worker
    (SO_REUSEPORT), so both processes' figures are in the sums."""
    with RetrieverClient(observed.retriever.target, timeout=120) as client:
        client.create_collection(COLLECTION)
        client.upsert(COLLECTION, fixture_documents())
    for _ in range(SEARCHES):
        with RetrieverClient(observed.retriever.target, timeout=120) as client:
            for mode in ("bm25", "dense", "hybrid"):
                client.search(COLLECTION, "wing lift at high speed", k=3, mode=mode)
    with GeneratorClient(observed.generator.target, timeout=300) as client:
        for question in ("What is lift?", "What does a wing do?"):
            client.ask(question, COLLECTION)
            observed.asks += 1


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.5)


class Prometheus:
    """A real Prometheus server on loopback, scraping the two services every second."""

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        jobs = [
            {
                "job_name": job,
                "scrape_interval": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
            for job, port in targets.items()
        ]
        config.write_text(json.dumps({"scrape_configs": jobs}))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    _prometheus_program("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def query(self, expression: str) -> list[dict[str, Any]]:
        address = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        try:
            with urllib.request.urlopen(address, timeout=5) as answer:
                body = json.load(answer)
        except OSError:
            return []  # not listening yet
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def number(self, expression: str) -> float:
        """The value of an expression that must have one."""
        found = self.value(expression)
        assert found is not None, f"Prometheus has no value for {expression}"
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module")
def prometheus(
    observed: Observed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    server = Prometheus(
        tmp_path_factory.mktemp("prometheus"),
        {"retriever": observed.retriever_metrics, "generator": observed.generator_metrics},
    )
    try:
        _wait_for(
            "both scrape targets up",
            lambda: server.value('sum(up{job=~"retriever|generator"})') == 2.0,
        )
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_both_services(
    observed: Observed, prometheus: Prometheus, traffic: None
) -> None:
    # Every search counted once, whichever of the two retriever processes answered it; each
    # answer made one hybrid search.
    expected = {"bm25": SEARCHES, "dense": SEARCHES, "hybrid": SEARCHES + observed.asks}
    searches = 'sum(realm_rpc_requests_total{job="retriever",method="Search",code="OK"})'
    _wait_for("the searches scraped", lambda: prometheus.value(searches) == sum(expected.values()))
    for mode, searched in expected.items():
        count = prometheus.number(f'sum(realm_search_duration_seconds_count{{mode="{mode}"}})')
        total = prometheus.number(f'sum(realm_search_duration_seconds_sum{{mode="{mode}"}})')
        assert count == searched, mode
        assert 0 < total / searched < 5.0, (mode, total)
    documents = len(fixture_documents())
    assert prometheus.number(f'realm_index_documents{{collection="{COLLECTION}"}}') == documents
    assert prometheus.number(f'realm_replication_lag_records{{collection="{COLLECTION}"}}') == 0
    assert prometheus.number('sum(realm_rpc_in_progress{method="Search"})') == 0
    # The generator: each answer with a retrieval, a first token and tokens.
    answers = 'sum(realm_rpc_requests_total{job="generator",code="OK"})'
    _wait_for("the answers scraped", lambda: prometheus.value(answers) == observed.asks)
    # Each service exposes its own families: a retriever that registered the generator's too
    # (by importing it) would show them at zero beside the generator's.
    assert prometheus.value('realm_time_to_first_token_seconds_count{job="retriever"}') is None
    # An answer is one generation or more (a short answer may read twice).
    generations = prometheus.number("realm_time_to_first_token_seconds_count")
    assert generations >= observed.asks
    assert prometheus.number("realm_requests_finished_total") == generations
    first_token = prometheus.number(
        "realm_time_to_first_token_seconds_sum / realm_time_to_first_token_seconds_count"
    )
    assert 0 < first_token < 60
    assert prometheus.number("realm_retrieval_duration_seconds_count") == observed.asks
    prompt = prometheus.number("realm_prompt_tokens_total")
    generated = prometheus.number("realm_generation_tokens_total")
    assert prompt > generated > 0
    assert prometheus.number("realm_sequences_decoding") == 0
    assert prometheus.number("realm_requests_waiting") == 0


def test_dashboard_and_alerts_use_series_the_services_export(
    observed: Observed, traffic: None
) -> None:
    """Every ``realm_`` name the Grafana dashboard and the alert rules query is one the
    services really export, and promtool accepts the rules."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count")}  # a counter's TYPE has its _total
    exported: set[str] = set()  # from the families' TYPE lines: a family may have no sample yet
    for port in (observed.retriever_metrics, observed.generator_metrics):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            for line in page.read().decode().splitlines():
                if line.startswith("# TYPE "):
                    _, _, name, kind = line.split()
                    exported.update(name + suffix for suffix in suffixes.get(kind, ("",)))
    dashboard = json.loads((REPO / "deploy/grafana/realm-dashboard.json").read_text())
    rules = RULES.read_text()
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())
    ]
    assert len(expressions) >= 10
    used: set[str] = set()
    for text in (*expressions, rules):
        used.update(word for word in _names(text) if word.startswith("realm_"))
    assert used - exported == set(), "queried but not exported"
    checked = subprocess.run(
        [_prometheus_program("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _names(expression: str) -> list[str]:
    word = ""
    found = []
    for char in expression + " ":
        if char.isalnum() or char in "_:":
            word += char
        else:
            if word:
                found.append(word)
            word = ""
    return found


def test_one_ask_is_one_trace_across_three_processes(observed: Observed, traffic: None) -> None:
    env = {**os.environ, **observed.otel_env}
    asked = subprocess.run(
        [
            sys.executable,
            "-m",
            "realm.app.cli.main",
            "ask",
            "What is lift?",
            "-c",
            COLLECTION,
            "--target",
            observed.generator.target,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert asked.returncode == 0, asked.stderr
    observed.asks += 1

    def cli_trace() -> list[Span]:
        roots = [s for s in observed.receiver.spans if s.service == "realm-cli"]
        if not roots:
            return []
        trace_id = roots[-1].trace_id
        spans = [s for s in observed.receiver.spans if s.trace_id == trace_id]
        services = {s.service for s in spans}
        # Each process exports in batches, so a parent that ends after its children (a server
        # span) may arrive in a later batch: the trace is whole once every parent is in it.
        ids = {s.span_id for s in spans}
        whole = all(not s.parent_id or s.parent_id in ids for s in spans)
        return spans if whole and services >= {"realm-generator", "realm-retriever"} else []

    # Every span's parent is in the same trace: a broken propagation never completes it.
    spans = _wait_for("the ask's whole trace, from all three processes", cli_trace)
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.name) for r in roots] == [
        ("realm-cli", "realm.v1.GeneratorService/GenerateStream")
    ]
    names = {(s.service, s.name) for s in spans}
    for expected in (
        ("realm-generator", "realm.v1.GeneratorService/GenerateStream"),
        ("realm-generator", "retrieve"),
        ("realm-generator", "pack_prompt"),
        ("realm-generator", "prefill"),
        ("realm-generator", "decode"),
        ("realm-retriever", "realm.v1.RetrieverService/Search"),
        ("realm-retriever", "bm25"),
        ("realm-retriever", "dense"),
        ("realm-retriever", "fuse"),
        ("realm-retriever", "hydrate"),
    ):
        assert expected in names, (expected, sorted(names))
    served = next(s for s in spans if s.service == "realm-generator" and s.kind == SERVER)
    assert by_id[served.parent_id].service == "realm-cli"
    searched = next(s for s in spans if s.name == "realm.v1.RetrieverService/Search")
    assert by_id[searched.parent_id].service in ("realm-generator", "realm-retriever")


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert tracing.requested({}) == ()
    assert tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == ("otlp",)
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "console,otlp"}) == ("console", "otlp")
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "none"}) == ()
    assert (
        tracing.requested(
            {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
        )
        == ()
    )
    with pytest.raises(ValueError, match="zipkin is not an exporter"):
        tracing.requested({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert not tracing.active()  # this test process installed no provider


def test_commands_refuse_tracing_settings_they_cannot_honour() -> None:
    """An exporter ReaLM does not have, or OTLP over HTTP, stops a command at once with the
    variable named, never a traceback or a silent lack of spans."""
    for variables, named in (
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'",
        ),
    ):
        for command in (["stats"], ["serve", "retriever", "--port", str(free_port())]):
            refused = subprocess.run(
                [sys.executable, "-m", "realm.app.cli.main", *command],
                env={**os.environ, **variables},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert refused.returncode == 2, refused.stderr
            assert named in refused.stderr
            assert "Traceback" not in refused.stderr
