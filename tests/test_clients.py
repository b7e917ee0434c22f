"""The client library against real servers: asyncio and sync facades, replicas, TLS and tokens."""

import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from realm.app.supervisor import free_port
from realm.client import (
    Answer,
    AsyncRealmClient,
    ConnectionOptions,
    Document,
    NotFound,
    RealmClient,
    Unauthenticated,
    Unavailable,
)
from tests.conftest import fixture_documents
from tests.servers import GeneratorProcess, RetrieverProcess, StubRetriever

pytestmark = pytest.mark.slow


async def test_async_client_covers_collections_documents_search_and_answers(
    retriever: RetrieverProcess, generator: GeneratorProcess, collection_name: str
) -> None:
    sent: list[int] = []

    async def documents() -> AsyncIterator[Document]:
        for document in fixture_documents():
            yield document

    async with AsyncRealmClient(retriever.target, generator.target) as realm:
        await realm.create_collection(collection_name)
        summary = await realm.upsert(
            collection_name, documents(), batch_size=5, progress=sent.append
        )
        assert summary.inserted == len(fixture_documents())
        assert sent == [5, 5, 2]
        assert collection_name in [c.name for c in await realm.list_collections()]
        hits = await realm.search(collection_name, "wrought-iron lattice tower", k=3, mode="bm25")
        assert hits[0].doc_id == "eiffel"
        assert await realm.compact(collection_name) == 1  # the same answers from a generation
        folded = await realm.search(collection_name, "wrought-iron lattice tower", k=3, mode="bm25")
        assert folded == hits
        assert (await realm.get(collection_name, "eiffel")).title == "Eiffel Tower"

        answer = await realm.ask("When was the Eiffel Tower completed?", collection_name, k=2)
        assert "1889" in answer.text
        events = [
            e
            async for e in realm.ask_stream(
                "When was the Eiffel Tower completed?", collection_name, k=2
            )
        ]
        final = events[-1]
        assert isinstance(final, Answer)
        assert "".join(e for e in events[:-1] if isinstance(e, str)) == final.text == answer.text

        assert await realm.delete(collection_name, ["eiffel", "nope"]) == (1, ["nope"])
        with pytest.raises(NotFound):
            await realm.get(collection_name, "eiffel")
        assert await realm.delete_collection(collection_name) == len(fixture_documents()) - 1


def test_sync_client_asks_and_leaving_a_stream_early_cancels_it(
    retriever: RetrieverProcess, generator: GeneratorProcess, answer_collection: str
) -> None:
    with RealmClient(retriever=retriever.target, generator=generator.target) as realm:
        assert realm.search(answer_collection, "photosynthesis", k=1)[0].doc_id == "photosynthesis"
        for event in realm.ask_stream(
            "Tell me a long story about Rome.",
            answer_collection,
            max_new_tokens=500,
            stop=["\u2603"],
        ):
            assert isinstance(event, str)
            break
        deadline = time.monotonic() + 10
        while realm.generator.info().sequences_decoding and time.monotonic() < deadline:
            time.sleep(0.1)
        assert realm.generator.info().sequences_decoding == 0
    with pytest.raises(ValueError, match="generator target"):
        RealmClient(retriever=retriever.target).ask("why?", answer_collection)


def test_a_list_of_addresses_is_balanced_per_call(tmp_path: Path) -> None:
    replicas = [StubRetriever(free_port(), tmp_path) for _ in range(2)]
    for replica in replicas:
        replica.start(delay=0.0)
    try:
        targets = [f"127.0.0.1:{replica.port}" for replica in replicas]
        with RealmClient(retriever=targets) as realm:
            for _ in range(12):
                assert realm.search("any", "tower")[0].doc_id == "eiffel"
        # Round-robin alternates once both connections are up; the first calls may all go to
        # whichever replica connected first.
        calls = [len(replica.deadlines_seen()) for replica in replicas]
        assert sum(calls) == 12
        assert min(calls) >= 4, calls
    finally:
        for replica in replicas:
            replica.kill()


def test_host_names_in_a_list_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="dns:///"):
        RealmClient(retriever=["retriever-a:50051", "retriever-b:50051"])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _wait_serving_over_tls(target: str, cert: Path, server: RetrieverProcess) -> None:
    """Health needs no token, only the certificate: exactly what a probe would send."""
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 300
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.3)


def test_tls_and_bearer_token(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    token = secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")  # a trailing newline, as editors leave, is not part of it
    server = RetrieverProcess(
        tmp_path / "data",
        *("--tls-cert", str(cert), "--tls-key", str(key), "--auth-token-file", str(token_file)),
    )
    server.start()
    good = ConnectionOptions.with_root_certificate(cert, bearer_token=token, timeout=30)
    try:
        _wait_serving_over_tls(f"localhost:{server.port}", cert, server)
        with RealmClient(retriever=f"localhost:{server.port}", options=good) as realm:
            realm.create_collection("secure")
            assert [c.name for c in realm.list_collections()] == ["secure"]
        wrong = ConnectionOptions.with_root_certificate(cert, bearer_token="x" * 20, timeout=5)
        with (
            RealmClient(retriever=f"localhost:{server.port}", options=wrong) as realm,
            pytest.raises(Unauthenticated, match="bearer token"),
        ):
            realm.list_collections()
        plaintext = ConnectionOptions(bearer_token=token, timeout=2, max_attempts=1)
        with (
            RealmClient(retriever=f"localhost:{server.port}", options=plaintext) as realm,
            pytest.raises(Unavailable),
        ):
            realm.list_collections()
    finally:
        assert server.stop() == 0
