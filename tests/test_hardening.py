"""What a security review found, as tests against real server processes: one server per data
directory, safe collection names, no descriptors left on deleted files, bounded echoes of client
input, and undecodable requests refused as INVALID_ARGUMENT."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from realm.client import Document, RealmClientError, RetrieverClient
from realm.errors import InvalidArgument
from realm.names import collection_name
from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from tests.servers import REPO, RetrieverProcess, health_status, open_descriptors, resident_kib

pytestmark = pytest.mark.slow
_SERVE_RETRIEVER = (sys.executable, "-m", "realm.app.cli.main", "serve", "retriever")


def _status(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
def stub(retriever: RetrieverProcess) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
    with grpc.insecure_channel(retriever.target) as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


@pytest.mark.parametrize("name", ["abc\n", "\nabc", "a/b", "..", "", "x" * 65, "名前"])
def test_collection_names_must_match_whole(name: str) -> None:
    with pytest.raises(InvalidArgument, match="not a valid collection name"):
        collection_name(name)
    assert collection_name("Abc_1-2") == "Abc_1-2"


def test_a_name_with_a_trailing_newline_is_refused_and_makes_no_directory(
    stub: retriever_pb2_grpc.RetrieverServiceStub, retriever: RetrieverProcess
) -> None:
    code, message = _status(
        lambda: stub.CreateCollection(retriever_pb2.CreateCollectionRequest(name="abc\n"))
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT, message
    assert not any("\n" in path.name for path in (retriever.data_dir / "collections").iterdir())


def test_undecodable_requests_are_invalid_arguments_not_unknown(
    retriever: RetrieverProcess,
) -> None:
    """A string field holding bad UTF-8 fails to parse before any servicer runs."""
    bad_name = b"\x0a\x02\xff\xfe"  # field 1 (name / collection), two bytes that are not UTF-8
    with grpc.insecure_channel(retriever.target) as channel:
        unary = channel.unary_unary("/realm.v1.RetrieverService/CreateCollection", None, None)
        stream = channel.stream_unary("/realm.v1.RetrieverService/Upsert", None, None)
        for call in (lambda: unary(bad_name, timeout=10), lambda: stream(iter([bad_name]))):
            code, message = _status(call)
            assert code is grpc.StatusCode.INVALID_ARGUMENT, message
            assert "UTF-8" in message


def test_echoed_client_values_are_cut_short(
    stub: retriever_pb2_grpc.RetrieverServiceStub, fixture_collection: str
) -> None:
    """A megabyte id must not come back whole in the error (it would break the message limit)."""
    huge = "x" * 1_000_000
    calls = [
        lambda: stub.GetDocument(
            retriever_pb2.GetDocumentRequest(collection=fixture_collection, id=huge)
        ),
        lambda: stub.Delete(retriever_pb2.DeleteRequest(collection=fixture_collection, ids=[huge])),
        lambda: stub.CreateCollection(retriever_pb2.CreateCollectionRequest(name=huge)),
        lambda: stub.Upsert(
            iter(
                [
                    retriever_pb2.UpsertRequest(collection=fixture_collection),
                    retriever_pb2.UpsertRequest(collection=huge),
                ]
            )
        ),
    ]
    for call in calls:
        code, message = _status(call)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, message[:200]
        assert len(message) < 400, message[:200]


def test_a_delete_names_a_bounded_number_of_ids(
    stub: retriever_pb2_grpc.RetrieverServiceStub, fixture_collection: str
) -> None:
    ids = [f"id-{i}" for i in range(10_001)]
    code, message = _status(
        lambda: stub.Delete(retriever_pb2.DeleteRequest(collection=fixture_collection, ids=ids))
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "max_ids_per_delete=10000" in message


def test_a_second_server_on_the_same_data_directory_exits_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with RetrieverProcess(data_dir) as first, RetrieverClient(first.target) as client:
        client.create_collection("owned")
        client.upsert("owned", [Document("a", "The first server owns this directory.")])
        second = subprocess.run(
            [*_SERVE_RETRIEVER, "--port", "0", "--data-dir", str(data_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 1
        assert f"in use by another retriever (pid {first.process.pid})" in second.stderr  # type: ignore[union-attr]
        assert client.stats("owned")[0].documents == 1
        client.upsert("owned", [Document("b", "Still writable by its owner.")])
        assert client.stats("owned")[0].last_sequence == 2


def test_start_up_sweeps_leftovers_and_refuses_a_name_taken_by_a_stray_directory(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data" / "collections"
    (root / ".creating-half-0123").mkdir(parents=True)  # a create cut short by a crash
    (root / "empty").mkdir()  # what an older version left when it crashed mid-create
    (root / "stray").mkdir()
    (root / "stray" / "notes.txt").write_text("not ours")
    with RetrieverProcess(tmp_path / "data") as server, RetrieverClient(server.target) as client:
        assert not (root / ".creating-half-0123").exists()
        assert not (root / "empty").exists()
        client.create_collection("empty")  # the name works again
        code, message = _status(
            lambda: retriever_pb2_grpc.RetrieverServiceStub(
                grpc.insecure_channel(server.target)
            ).CreateCollection(retriever_pb2.CreateCollectionRequest(name="stray"))
        )
        assert code is grpc.StatusCode.FAILED_PRECONDITION, message
        assert "stray exists but is not a collection" in message
        assert (root / "stray" / "notes.txt").read_text() == "not ours"


def _descriptors_into(pid: int, directory: Path) -> list[str]:
    """Paths under ``directory`` (or deleted files) that process ``pid`` holds open."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(str(directory)) or target.endswith("(deleted)"):
            held.append(target)
    return held


def test_deleted_collections_leave_no_open_descriptors_and_no_memory(tmp_path: Path) -> None:
    """Create, write, search from many threads, build, delete; eight rounds. Every descriptor
    of the deleted collections must be closed (or their disk space is never freed), and memory
    must stop growing once the first rounds have warmed the caches up."""
    data_dir = tmp_path / "data"
    with RetrieverProcess(data_dir) as server, RetrieverClient(server.target) as client:
        assert server.process is not None
        pid = server.process.pid
        descriptors = open_descriptors(pid)
        warm: int | None = None
        for round_number in range(8):
            name = f"round-{round_number}"
            client.create_collection(name)
            client.upsert(
                name, [Document(f"d{i}", f"Round {round_number} text {i}.") for i in range(40)]
            )
            for mode in ("bm25", "dense", "hybrid") * 4:
                client.search(name, "text", mode=mode)  # spreads over the server's threads
            client.get(name, "d3")
            client.compact(name)
            client.delete_collection(name)
            if round_number == 2:
                warm = resident_kib(pid)
        assert _descriptors_into(pid, data_dir / "collections") == []
        assert open_descriptors(pid) <= descriptors + 2
        assert warm is not None
        assert resident_kib(pid) <= warm + 32 * 1024, "memory grows with every collection"
        server.signal(signal.SIGTERM)
        assert server.wait() == 0


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (retriever_pb2.CollectionConfig(embedding_model="/etc"), "not offered by this server"),
        (retriever_pb2.CollectionConfig(embedding_model="someone/model"), "--embedding-models"),
        (retriever_pb2.CollectionConfig(annoy_trees=4294967295), "annoy_trees=4294967295"),
        (retriever_pb2.CollectionConfig(k1=3e38), "k1="),
        (retriever_pb2.CollectionConfig(k1=float("nan")), "k1=nan"),
        (retriever_pb2.CollectionConfig(b=float("inf")), "b=inf"),
        (retriever_pb2.CollectionConfig(chunk_words=2**32 - 1), "chunk_words=4294967295"),
    ],
)
def test_collection_settings_are_bounded_and_models_come_from_the_allowlist(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    config: retriever_pb2.CollectionConfig,
    fragment: str,
) -> None:
    code, message = _status(
        lambda: stub.CreateCollection(
            retriever_pb2.CreateCollectionRequest(name="bounded", config=config), timeout=30
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT, message
    assert fragment in message


def test_titles_metadata_and_filters_are_bounded(
    stub: retriever_pb2_grpc.RetrieverServiceStub, fixture_collection: str, retriever: Any
) -> None:
    def upsert(**fields: Any) -> tuple[grpc.StatusCode, str]:
        document = common_pb2.Document(id="big", text="Some text.", **fields)
        request = retriever_pb2.UpsertRequest(collection=fixture_collection, documents=[document])
        return _status(lambda: stub.Upsert(iter([request]), timeout=30))

    assert upsert(title="t" * 5_000_000)[1].startswith("message 0: documents[0].title has")
    assert "max_metadata_value_bytes" in upsert(metadata={"k": "v" * 5_000_000})[1]
    assert "max_metadata_key_bytes" in upsert(metadata={"k" * 100: "v"})[1]
    wide_filter = {f"key{i}": "v" for i in range(1_000_000)}
    code, message = _status(
        lambda: stub.Search(
            retriever_pb2.SearchRequest(
                collection=fixture_collection, query="tower", filter=wide_filter
            ),
            timeout=60,
        )
    )
    assert (code, "max_filter_entries=16" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    assert health_status(retriever.target) == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrieverProcess]:
    """A retriever with small caps, so that running into each is quick."""
    data_dir = tmp_path_factory.mktemp("tight") / "data"
    caps = ("--max-message-bytes", "300000", "--max-concurrent-rpcs", "4")
    streams = ("--max-concurrent-upserts", "2", "--upsert-idle-seconds", "2")
    with RetrieverProcess(data_dir, *caps, *streams) as server:
        yield server


def test_a_response_too_large_to_send_is_refused_before_it_is_built(
    tight_server: RetrieverProcess,
) -> None:
    with RetrieverClient(tight_server.target) as client:
        client.create_collection("wide", chunk_words=200)
        words = " ".join(f"word{i}" for i in range(180))
        documents = [Document(f"d{i}", f"Shared {words}.") for i in range(300)]
        client.upsert("wide", documents, batch_size=50)
        assert len(client.search("wide", "shared", mode="bm25", k=10)) == 10
        code, message = _status_of_client(
            lambda: client.search("wide", "shared", mode="bm25", k=300)
        )
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_response_bytes=300,000" in message


def _status_of_client(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except RealmClientError as error:
        return error.code, str(error)
    return grpc.StatusCode.OK, ""


def test_stuck_upsert_streams_are_capped_timed_out_and_never_starve_health(
    tight_server: RetrieverProcess,
) -> None:
    """Streams that send one message and then nothing: the third is refused at once, health
    stays SERVING throughout, and the idle limit ends the stuck ones with a clear status."""
    release = threading.Event()
    with RetrieverClient(tight_server.target) as client:
        client.create_collection("stuck")

    def stuck_stream() -> Iterator[retriever_pb2.UpsertRequest]:
        yield retriever_pb2.UpsertRequest(collection="stuck")
        release.wait(30)

    with grpc.insecure_channel(tight_server.target) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        stuck = [stub.Upsert.future(stuck_stream(), timeout=30) for _ in range(2)]
        time.sleep(0.5)
        code, message = _status(lambda: stub.Upsert(stuck_stream(), timeout=30))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, message
        assert "Upsert calls are in progress" in message
        for _ in range(3):  # more probes than the server's max_concurrent_rpcs allows calls
            assert health_status(tight_server.target) == health_pb2.HealthCheckResponse.SERVING
        for future in stuck:
            with pytest.raises(grpc.RpcError) as ended:
                future.result(timeout=30)
            assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert "stream_idle_s=2" in (ended.value.details() or "")
        release.set()
        fine = retriever_pb2.UpsertRequest(
            collection="stuck", documents=[common_pb2.Document(id="a", text="Now it works.")]
        )
        assert stub.Upsert(iter([fine]), timeout=60).inserted == 1
