"""Transport security against a real retriever: mutual TLS, the bearer token on every RPC
(streaming ones and reflection included), tokens never sent over plaintext by accident, and
certificate mistakes named at start-up."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from realm.channels import ConnectionOptions
from realm.client import Document, GeneratorClient, RetrieverClient, Unavailable
from realm.server import ServerOptions
from realm.v1 import generator_pb2, retriever_pb2
from tests.servers import REPO, GeneratorProcess, RetrieverProcess

pytestmark = pytest.mark.slow
TOKEN = "tls-test-token-0123456789abcdef"  # noqa: S105 -- a test server's token


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(folder: Path, name: str, ca: Path | None, ca_key: Path | None) -> tuple[Path, Path]:
    """A key and a certificate for ``name``: signed by ``ca``, or self-signed without one."""
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    subject = ("-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    new_key = ("-newkey", "rsa:2048", "-nodes", "-keyout", str(key))
    if ca is None or ca_key is None:
        _openssl("req", "-x509", *new_key, "-days", "1", *subject, "-out", str(cert))
        return cert, key
    request = folder / f"{name}.csr"
    _openssl("req", "-new", *new_key, *subject, "-out", str(request))
    _openssl(
        *("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key)),
        *("-CAcreateserial", "-days", "1", "-copy_extensions", "copy", "-out", str(cert)),
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = _issue(folder, "realm-test-ca", None, None)
    server, server_key = _issue(folder, "server", ca, ca_key)
    client, client_key = _issue(folder, "client", ca, ca_key)
    stranger, stranger_key = _issue(folder, "stranger", None, None)  # signed by nobody we trust
    token = folder / "token"
    token.write_text(TOKEN)
    return {
        "ca": ca,
        "server": server,
        "server_key": server_key,
        "client": client,
        "client_key": client_key,
        "stranger": stranger,
        "stranger_key": stranger_key,
        "token": token,
    }


@pytest.fixture(scope="module")
def mtls_server(
    pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RetrieverProcess]:
    server = RetrieverProcess(
        tmp_path_factory.mktemp("mtls") / "data",
        *("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])),
        *("--tls-client-ca", str(pki["ca"]), "--auth-token-file", str(pki["token"])),
        "--reflection",
    )
    server.start()
    assert server.process is not None
    try:
        credentials = _credentials(pki, "client")
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=300)
            health = health_pb2_grpc.HealthStub(channel)
            while health.Check(health_pb2.HealthCheckRequest(), timeout=300).status != 1:
                assert server.process.poll() is None, server.log()
        yield server
    finally:
        assert server.stop() == 0


def _credentials(pki: dict[str, Path], who: str | None) -> grpc.ChannelCredentials:
    if who is None:
        return grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki[f"{who}_key"].read_bytes(),
        certificate_chain=pki[who].read_bytes(),
    )


def _options(pki: dict[str, Path], who: str | None, token: str | None) -> ConnectionOptions:
    return ConnectionOptions(
        tls=True,
        tls_root_certificate=pki["ca"].read_bytes(),
        tls_client_certificate=None if who is None else pki[who].read_bytes(),
        tls_client_key=None if who is None else pki[f"{who}_key"].read_bytes(),
        bearer_token=token,
        timeout=10,
        max_attempts=1,
    )


def test_mutual_tls_admits_only_certificates_the_server_trusts(
    pki: dict[str, Path], mtls_server: RetrieverProcess
) -> None:
    target = f"localhost:{mtls_server.port}"
    with RetrieverClient(target, options=_options(pki, "client", TOKEN)) as client:
        client.create_collection("mutual")
        client.upsert("mutual", [Document("a", "Only trusted clients write here.")])
        assert client.search("mutual", "trusted", mode="bm25")[0].doc_id == "a"
    for who in (None, "stranger"):
        with (
            RetrieverClient(target, options=_options(pki, who, TOKEN)) as client,
            pytest.raises(Unavailable) as denied,
        ):
            client.list_collections()
        assert denied.value.code is grpc.StatusCode.UNAVAILABLE


def test_every_rpc_and_reflection_need_the_token_but_health_does_not(
    pki: dict[str, Path], mtls_server: RetrieverProcess
) -> None:
    service = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"]
    with grpc.secure_channel(
        f"localhost:{mtls_server.port}", _credentials(pki, "client")
    ) as channel:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            assert _status_without_token(channel, path, method.client_streaming) is (
                grpc.StatusCode.UNAUTHENTICATED
            ), path
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(
                reflection.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    assert len(service.methods) >= 9


def _status_without_token(
    channel: grpc.Channel, path: str, client_streaming: bool
) -> grpc.StatusCode:
    """Calls ``path`` with an empty message and no token; the status it ends with."""
    try:
        if client_streaming:
            channel.stream_unary(path, None, None)(iter([b""]), timeout=10)
        else:
            channel.unary_unary(path, None, None)(b"", timeout=10)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def test_a_token_is_never_sent_over_plaintext_to_another_machine() -> None:
    token = ConnectionOptions(bearer_token=TOKEN)
    with pytest.raises(ValueError, match="over plaintext"):
        RetrieverClient("retriever.example:50051", options=token)
    with pytest.raises(ValueError, match="over plaintext"):
        RetrieverClient("dns:///retriever.example:50051", options=token)
    for loopback in ("localhost:50051", "127.0.0.1:50051", "[::1]:50051"):
        RetrieverClient(loopback, options=token).close()
    allowed = ConnectionOptions(bearer_token=TOKEN, allow_plaintext_token=True)
    RetrieverClient("retriever.example:50051", options=allowed).close()


def test_a_certificate_that_does_not_fit_its_key_is_named_at_start_up(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="cannot be used together"):
        ServerOptions(tls_cert_file=pki["server"], tls_key_file=pki["client_key"])
    with pytest.raises(ValueError, match="cannot be used together"):
        ServerOptions(tls_cert_file=pki["server_key"], tls_key_file=pki["server"])
    started = subprocess.run(
        [
            *(sys.executable, "-m", "realm.app.cli.main", "serve", "retriever", "--port", "0"),
            *("--data-dir", str(tmp_path / "data"), "--tls-cert", str(pki["server"])),
            *("--tls-key", str(pki["client_key"])),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 2
    assert f"certificate {pki['server']} and key {pki['client_key']}" in started.stderr


def test_the_generator_refuses_to_start_with_a_token_for_a_plaintext_retriever() -> None:
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "realm.app.cli.main",
            "serve",
            "generator",
            "--port",
            "0",
            "--retriever",
            "retriever.example:50051",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "REALM_RETRIEVER_TOKEN": TOKEN},
    )
    assert started.returncode == 2
    assert "refusing to send the bearer token to retriever.example:50051" in started.stderr


def test_the_generator_reaches_a_mutual_tls_retriever_with_its_token(
    pki: dict[str, Path], mtls_server: RetrieverProcess, tmp_path: Path
) -> None:
    target = f"localhost:{mtls_server.port}"
    with RetrieverClient(target, options=_options(pki, "client", TOKEN)) as client:
        client.create_collection("handbook")
        client.upsert("handbook", [Document("leave", "Staff get 25 days of paid leave.")])
    generator = GeneratorProcess(
        tmp_path,
        target,
        *("--retriever-tls-ca", str(pki["ca"]), "--retriever-token-file", str(pki["token"])),
        *("--retriever-tls-cert", str(pki["client"])),
        *("--retriever-tls-key", str(pki["client_key"])),
        *("--auth-token-file", str(pki["token"])),  # its own callers need the token too
    )
    with (
        generator,
        GeneratorClient(generator.target, timeout=300, options=_plain(TOKEN)) as asker,
    ):
        answer = asker.ask("How many days of leave?", "handbook", k=1, max_new_tokens=4)
        service = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"]
        with grpc.insecure_channel(generator.target) as channel:
            for method in service.methods:  # Generate, GenerateStream (streamed), Info
                path = f"/{service.full_name}/{method.name}"
                if method.server_streaming:
                    code = _streamed_status_without_token(channel, path)
                else:
                    code = _status_without_token(channel, path, client_streaming=False)
                assert code is grpc.StatusCode.UNAUTHENTICATED, path
    assert answer.context_used
    assert [source.doc_id for source in answer.sources] == ["leave"]


def _plain(token: str) -> ConnectionOptions:
    return ConnectionOptions(bearer_token=token, timeout=300)


def _streamed_status_without_token(channel: grpc.Channel, path: str) -> grpc.StatusCode:
    try:
        list(channel.unary_stream(path, None, None)(b"", timeout=10))
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK
