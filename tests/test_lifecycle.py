"""Real processes and real signals: readiness, graceful shutdown, restart, and kill -9."""

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from realm.client import (
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


class _HeldOpen:
    """An upsert's documents that keep its stream (and its server slot) open: the first half
    is sent, then the stream waits until released, so the server is mid-call for as long as a
    test needs, on a fast machine as on a slow one."""

    def __init__(self, count: int) -> None:
        self.documents = _many(count, "d")
        self.streaming = threading.Event()
        self.release = threading.Event()

    def __iter__(self) -> Iterator[Document]:
        half = len(self.documents) // 2
        yield from self.documents[:half]
        self.streaming.set()
        self.release.wait(60)
        yield from self.documents[half:]


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
            documents = _HeldOpen(300)
            upload = threading.Thread(
                target=lambda: result.append(client.upsert("c", documents, batch_size=50))
            )
            upload.start()
            assert documents.streaming.wait(60)
            server.signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while "shutting down" not in server.log():  # draining, the upsert still open
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            documents.release.set()
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
            doomed = _many(2000, "lost")  # ~4.5 s of encoding on 2 AVX-512 cores, more elsewhere
            sent: list[int] = []
            all_sent = threading.Event()

            def count_sent(batch: int) -> None:
                sent.append(batch)
                if sum(sent) == len(doomed):
                    all_sent.set()

            def doomed_upsert() -> None:
                try:
                    client.upsert("c", doomed, progress=count_sent)
                except Unavailable as error:
                    errors.append(error)

            upload = threading.Thread(target=doomed_upsert)
            upload.start()
            # The server applies a stream when it ends: shortly after the last batch it is
            # mid-write (encoding the passages, or appending them to the log), on a fast machine
            # as on a slow one.
            assert all_sent.wait(60)
            time.sleep(0.3)
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
        documents = _HeldOpen(300)
        busy = threading.Thread(target=lambda: client.upsert("c", documents, batch_size=50))
        busy.start()
        assert documents.streaming.wait(60)
        with pytest.raises(ResourceExhausted):  # refused, not queued behind the upsert
            client.list_collections()
        documents.release.set()
        busy.join(120)
        assert client.stats("c")[0].documents == 300  # the slot frees up again
