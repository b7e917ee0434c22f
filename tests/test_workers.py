"""``realm serve retriever --workers 2``: a writer and a read worker sharing one port.

Each test opens many connections (the kernel spreads connections, not calls, over the
processes) and checks what a client must never notice: which process answered.
"""

import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from tests.conftest import fixture_documents
from tests.servers import RetrieverProcess

pytestmark = pytest.mark.slow
TOKEN = "workers-test-token-0123456789"  # noqa: S105 -- a test server's token
CONNECTIONS = 16
SEARCH = "/realm.v1.RetrieverService/Search"


@contextmanager
def _connections(target: str) -> Iterator[list[retriever_pb2_grpc.RetrieverServiceStub]]:
    # A local subchannel pool gives every channel its own connection, as separate clients have.
    channels = [
        grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS)
    ]
    yield [retriever_pb2_grpc.RetrieverServiceStub(c) for c in channels]
    for channel in channels:
        channel.close()


def _auth() -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {TOKEN}"),)


def _search(stub: retriever_pb2_grpc.RetrieverServiceStub, query: str) -> list[tuple[str, float]]:
    response = stub.Search(
        retriever_pb2.SearchRequest(
            collection="docs", query=query, k=3, mode=common_pb2.SEARCH_MODE_BM25
        ),
        metadata=_auth(),
        timeout=30,
    )
    return [(hit.passage.doc_id, round(hit.score, 5)) for hit in response.hits]


def _upsert(stub: retriever_pb2_grpc.RetrieverServiceStub, doc_id: str, text: str) -> None:
    document = common_pb2.Document(id=doc_id, text=text)
    stub.Upsert(
        iter([retriever_pb2.UpsertRequest(collection="docs", documents=[document])]),
        metadata=_auth(),
        timeout=60,
    )


def _log_lines(server: RetrieverProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def wait_for_log(server: RetrieverProcess, pattern: str, count: int = 1) -> list[str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.findall(pattern, server.log())
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the log {count} times:\n{server.log()}")


def _searches_by_process(server: RetrieverProcess) -> Counter[object]:
    return Counter(e["pid"] for e in _log_lines(server) if e.get("method") == SEARCH)


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.1)
    return False


def _two_processes(data_dir: Path) -> RetrieverProcess:
    token_file = data_dir.parent / "token"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TOKEN)
    return RetrieverProcess(
        data_dir, "--workers", "2", "--auth-token-file", str(token_file), "--log-level", "DEBUG"
    )


@contextmanager
def _serving_corpus(data_dir: Path) -> Iterator[RetrieverProcess]:
    """Two processes serving the fixture corpus as generation 1."""
    with _two_processes(data_dir) as server:
        wait_for_log(server, r"worker \d+ serving searches")
        documents = [
            common_pb2.Document(id=d.id, text=d.text, title=d.title, metadata=d.metadata)
            for d in fixture_documents()
        ]
        with grpc.insecure_channel(server.target) as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            stub.CreateCollection(
                retriever_pb2.CreateCollectionRequest(name="docs"), metadata=_auth(), timeout=60
            )
            stub.Upsert(
                iter([retriever_pb2.UpsertRequest(collection="docs", documents=documents)]),
                metadata=_auth(),
                timeout=120,
            )
            stub.Compact(
                retriever_pb2.CompactRequest(collection="docs"), metadata=_auth(), timeout=120
            )
        wait_for_log(server, r"this worker serves generation 1")
        yield server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrieverProcess]:
    with _serving_corpus(tmp_path_factory.mktemp("workers") / "data") as server:
        yield server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RetrieverProcess]:
    """A server of its own, for a test that kills its processes."""
    with _serving_corpus(tmp_path / "data") as server:
        yield server


def test_both_processes_answer_and_every_connection_sees_each_acknowledged_write(
    shared: RetrieverProcess,
) -> None:
    with _connections(shared.target) as stubs:
        before = _searches_by_process(shared)
        answers = {tuple(_search(stub, "tower in Paris")) for stub in stubs}
        assert len(answers) == 1, answers  # the same answer whichever process took it
        assert next(iter(answers))[0][0] == "eiffel"
        answered = _searches_by_process(shared) - before
        assert len(answered) == 2, answered  # the worker answered some of them itself...
        assert sum(answered.values()) == CONNECTIONS  # ...and relayed none (a relay logs twice)

        # Writes go through whichever process the connection reached; every connection must
        # see each one as soon as it is acknowledged (the worker hands those searches over).
        for round_number, writer_stub in enumerate(stubs[:4]):
            _upsert(writer_stub, f"glacier{round_number}", f"glacier number {round_number} ice")
            for stub in stubs:
                assert _search(stub, f"glacier number {round_number}")[0][0] == (
                    f"glacier{round_number}"
                )
        stubs[5].Delete(
            retriever_pb2.DeleteRequest(collection="docs", ids=["glacier0"]),
            metadata=_auth(),
            timeout=30,
        )
        for stub in stubs:
            assert "glacier0" not in [doc_id for doc_id, _ in _search(stub, "glacier number 0")]


def test_a_second_server_cannot_join_the_port(shared: RetrieverProcess, tmp_path: Path) -> None:
    """The writer and its workers share the port; another server with workers must not."""
    intruder = RetrieverProcess(tmp_path / "other", "--workers", "2", port=shared.port)
    intruder.start()
    assert intruder.wait(timeout=120) != 0
    assert f"could not bind 127.0.0.1:{shared.port}" in intruder.log()


def test_a_relayed_call_keeps_the_writers_status_and_the_token_check(
    shared: RetrieverProcess,
) -> None:
    with _connections(shared.target) as stubs:
        for stub in stubs:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Stats(retriever_pb2.StatsRequest(collection="docs"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as invalid:
                _upsert(stub, "", "a document without an id")
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "id" in (invalid.value.details() or "")
            with pytest.raises(grpc.RpcError) as missing:
                stub.Search(
                    retriever_pb2.SearchRequest(collection="nope", query="x", k=1),
                    metadata=_auth(),
                    timeout=30,
                )
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert "nope" in (missing.value.details() or "")


def test_a_dead_worker_is_replaced_and_all_stop_with_the_writer(
    served: RetrieverProcess,
) -> None:
    (first,) = wait_for_log(served, r"started worker 0 \(pid (\d+)\)")
    os.kill(int(first), signal.SIGKILL)
    pids = wait_for_log(served, r"started worker 0 \(pid (\d+)\)", count=2)
    assert _gone(int(first))
    wait_for_log(served, r"this worker serves generation 1", count=2)
    with _connections(served.target) as stubs:
        assert {_search(stub, "tower in Paris")[0][0] for stub in stubs} == {"eiffel"}
    assert served.stop() == 0
    assert _gone(int(pids[1])), "the worker outlived its writer's shutdown"


def test_a_worker_stops_when_its_writer_is_killed(tmp_path: Path) -> None:
    with _two_processes(tmp_path / "data") as server:
        (worker,) = wait_for_log(server, r"started worker 0 \(pid (\d+)\)")
        wait_for_log(server, r"worker \d+ serving searches")
        server.signal(signal.SIGKILL)
        server.wait()
        assert _gone(int(worker)), "the worker kept serving without its writer"
