"""Connection management: every gRPC option we set is one gRPC knows, and clients' keepalive
pings never get a long, silent call closed ("too many pings")."""

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from realm.channels import RETRIEVER_SERVICE, ConnectionOptions, aio_channel, channel_options
from realm.server import RunningServer, ServerOptions, start_server
from tests.servers import REPO

_OPTION_LITERAL = re.compile(r"""["'](grpc\.[a-z0-9_.]+)["']""")
_SOURCES = ("realm", "retriever_service", "generator_service", "client", "bench", "tests")


def _core_library() -> bytes:
    """gRPC's compiled core: every channel argument it reads is a NUL-terminated string in it."""
    (library,) = (Path(grpc.__file__).parent / "_cython").glob("cygrpc*.so")
    return library.read_bytes()


def _options_in_source() -> set[str]:
    names: set[str] = set()
    for folder in _SOURCES:
        for path in (REPO / folder).rglob("*.py"):
            if "realm/v1" not in path.as_posix():
                names.update(_OPTION_LITERAL.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_grpc_option_the_code_sets_is_known_to_grpc() -> None:
    """gRPC ignores an unknown option name silently: that is how a misspelt ping setting let
    long ingests die. Each name must be one the core library actually reads."""
    core = _core_library()
    assert b"grpc.http2.min_ping_interval_without_data_ms\0" in core  # the check can see names
    set_by_code = (
        {name for name, _ in ServerOptions().grpc_options()}
        | {name for name, _ in channel_options([RETRIEVER_SERVICE], ConnectionOptions())}
        | _options_in_source()
    )
    assert len(set_by_code) > 15
    unknown = sorted(name for name in set_by_code if name.encode() + b"\0" not in core)
    assert unknown == [], f"options gRPC does not know (ignored silently): {unknown}"
    assert b"grpc.http2.min_recv_ping_interval_without_data_ms\0" not in core


async def _watch_for(
    running: RunningServer, options: ConnectionOptions, silent_s: float
) -> list[int]:
    """Opens a health Watch (a call that stays silent until the status changes), waits, then
    flips the status and returns every status the watcher received."""
    statuses: list[int] = []
    async with aio_channel(f"127.0.0.1:{running.port}", [], options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))

        async def read() -> None:
            responses: AsyncIterator[health_pb2.HealthCheckResponse] = call.__aiter__()
            async for response in responses:
                statuses.append(response.status)
                if len(statuses) == 2:
                    return

        reader = asyncio.create_task(read())
        await asyncio.sleep(silent_s)
        await running.set_serving(True)
        await asyncio.wait_for(reader, 5)
    return statuses


# gRPC's client sends at most one ping a second whatever keepalive_s says.
CLIENT_PING_S = 1.0


async def test_a_silent_call_survives_many_client_keepalive_pings() -> None:
    """The client pings every second for 5 s, as a 60 s keepalive does over five minutes of
    encoding; the server allows pings that often, so the call lives to see its answer. (gRPC's
    default policy, which the misspelt option left in force, closes it after the third ping.)"""
    server_options = ServerOptions(port=0, min_client_ping_interval_s=CLIENT_PING_S / 2)
    running = await start_server(server_options, lambda server: None, [])
    try:
        client_options = ConnectionOptions(keepalive_s=CLIENT_PING_S, max_attempts=1)
        statuses = await _watch_for(running, client_options, silent_s=5 * CLIENT_PING_S)
    finally:
        await running.stop(0)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING, serving]


async def test_a_client_pinging_more_often_than_allowed_is_cut_off() -> None:
    """The same call against the default policy (pings at most every 10 s) dies: the policy is
    enforced, so the test above measures the setting and not luck."""
    running = await start_server(ServerOptions(port=0), lambda server: None, [])
    try:
        client_options = ConnectionOptions(keepalive_s=CLIENT_PING_S, max_attempts=1)
        with pytest.raises(aio.AioRpcError) as failure:
            await _watch_for(running, client_options, silent_s=5 * CLIENT_PING_S)
    finally:
        await running.stop(0)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "Too many pings"


async def test_calls_are_refused_as_unavailable_until_the_service_is_ready() -> None:
    """A restarted server listens before it has loaded its indexes; until then a call must get
    UNAVAILABLE (which clients retry), not an answer from an empty registry."""

    async def echo(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    def register(server: aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler}),)
        )

    running = await start_server(ServerOptions(port=0), register, [])
    try:
        async with aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = channel.unary_unary("/test.Echo/Echo", None, None)
            with pytest.raises(aio.AioRpcError) as refused:
                await call(b"hello", timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            await running.set_serving(True)
            assert await call(b"hello", timeout=5) == b"hello"
    finally:
        await running.stop(0)
