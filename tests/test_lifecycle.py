"""Real processes and real signals: readiness, graceful shutdown, restart, and kill -9."""

import signal
import threading
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from client import (
    Document,
    NotFound,
    ResourceExhausted,
    RetrieverClient,
    Unavailable,
    UpsertSummary,
)
from tests.conftest import fixture_documents
from tests.servers import RetrieverProcess, health_status

pytestmark = pytest.mark.slow


def _many(count: int, prefix: str) -> list[Document]:
    return [
        Document(
            f"{prefix}-{i}",
            f"Report {i} on turbine blade {i % 17} fatigue and wing flutter at Mach {i % 5}.",
        )
        for i in range(count)
    ]


def test_not_serving_until_loaded_then_graceful_sigterm_finishes_in_flight_work(
    tmp_path: Path,
) -> None:
    # A generous grace period: the point is that in-flight work finishes, however slow the CPU.
    server = RetrieverProcess(tmp_path / "data", "--grace-seconds", "120").start()
    seen: list[int | None] = []
    try:
        while not seen or seen[-1] != health_pb2.HealthCheckResponse.SERVING:
            seen.append(health_status(server.target))
            assert server.process is not None
            assert server.process.poll() is None, server.log()
            time.sleep(0.05)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen  # bound, but still loading

        with RetrieverClient(server.target, timeout=60) as client:
            client.create_collection("c")
            result: list[UpsertSummary] = []
            upload = threading.Thread(
                target=lambda: result.append(client.upsert("c", _many(300, "d")))
            )
            upload.start()
            time.sleep(1.0)  # the upsert is now encoding on the server
            server.signal(signal.SIGTERM)
            upload.join(120)
        assert len(result) == 1  # the in-flight call was allowed to finish
        assert result[0].inserted == 300
        assert server.wait(120) == 0
        assert "stopped cleanly" in server.log()
    finally:
        server.stop()

    with (
        RetrieverProcess(tmp_path / "data") as restarted,
        RetrieverClient(restarted.target) as client,
    ):
        assert client.stats("c")[0].documents == 300


def test_restart_serves_identical_results(tmp_path: Path) -> None:
    queries = ["iron tower", "机器学习", "caffeine", "energy in cells"]
    with RetrieverProcess(tmp_path / "data") as server, RetrieverClient(server.target) as client:
        client.create_collection("c", language="zh")
        client.upsert("c", fixture_documents())
        before = [client.search("c", q, k=5) for q in queries]
    with RetrieverProcess(tmp_path / "data") as server, RetrieverClient(server.target) as client:
        after = [client.search("c", q, k=5) for q in queries]
        assert client.list_collections()[0].language == "zh"
    assert after == before


def test_kill_9_during_an_upsert_keeps_only_acknowledged_writes(tmp_path: Path) -> None:
    server = RetrieverProcess(tmp_path / "data").start().wait_serving()
    try:
        with RetrieverClient(server.target, timeout=60) as client:
            client.create_collection("c")
            client.upsert("c", fixture_documents())
            errors: list[Exception] = []

            def doomed_upsert() -> None:
                try:
                    client.upsert("c", _many(400, "lost"))
                except Unavailable as error:
                    errors.append(error)

            upload = threading.Thread(target=doomed_upsert)
            upload.start()
            time.sleep(1.5)  # mid-write: vectors being encoded, or the log being appended
            server.signal(signal.SIGKILL)
            upload.join(60)
        assert server.wait(10) == -signal.SIGKILL
        assert errors  # the client was told; nothing was acknowledged
    finally:
        server.stop()

    with (
        RetrieverProcess(tmp_path / "data") as restarted,
        RetrieverClient(restarted.target) as client,
    ):
        stats = client.stats("c")[0]
        assert (stats.documents, stats.last_sequence) == (len(fixture_documents()), 1)
        with pytest.raises(NotFound):
            client.get("c", "lost-0")
        assert client.search("c", "Gustave Eiffel", k=1)[0].doc_id == "eiffel"
        summary = client.upsert("c", _many(3, "after"))
        assert (summary.inserted, summary.sequence) == (3, 2)


def test_calls_beyond_the_concurrency_limit_are_refused_at_once(tmp_path: Path) -> None:
    with (
        RetrieverProcess(tmp_path / "data", "--max-concurrent-rpcs", "1") as server,
        RetrieverClient(server.target, timeout=120) as client,
    ):
        client.create_collection("c")
        busy = threading.Thread(target=lambda: client.upsert("c", _many(300, "d")))
        busy.start()
        time.sleep(1.0)  # the upsert holds the only slot while it encodes
        with pytest.raises(ResourceExhausted):  # refused, not queued behind the upsert
            client.list_collections()
        busy.join(120)
        assert client.stats("c")[0].documents == 300  # the slot frees up again
