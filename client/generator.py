"""Clients of the generator service: ``GeneratorClient`` (blocking) and ``AsyncGeneratorClient``
(asyncio): answers with their sources, whole or streamed.

UNAVAILABLE is retried by gRPC's own retry policy (a streamed call only until its first message
arrives); connection settings are ``realm.channels.ConnectionOptions``.
"""

from collections.abc import AsyncGenerator, Generator
from types import TracebackType
from typing import Unpack

from realm.channels import GENERATOR_SERVICE, ConnectionOptions, Target
from realm.client import calls
from realm.client.transport import AsyncTransport, SyncTransport
from realm.client.types import Answer, AskOptions, GeneratorInfo
from realm.ports import GENERATOR_TARGET
from realm.v1 import generator_pb2_grpc


class GeneratorClient:
    """Talks to one generator target (``host:port``, or ``dns:///name`` for several replicas)."""

    def __init__(
        self,
        target: Target = GENERATOR_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
    ) -> None:
        """``options`` holds TLS, token, retries and keepalive (``max_attempts=1`` shows a
        replica's own failure at once); ``timeout`` overrides its timeouts."""
        self._calls = SyncTransport(
            target,
            GENERATOR_SERVICE,
            generator_pb2_grpc.GeneratorServiceStub,
            options or ConnectionOptions(),
            timeout,
        )

    def __enter__(self) -> "GeneratorClient":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._calls.close()

    def ask(self, question: str, collection: str, **options: Unpack[AskOptions]) -> Answer:
        """The whole answer at once, with its sources."""
        return self._calls.unary(calls.GENERATE, question, collection, **options)

    def ask_stream(
        self, question: str, collection: str, **options: Unpack[AskOptions]
    ) -> Generator[str | Answer, None, None]:
        """Text pieces as they are generated, then the ``Answer``. Closing the iterator (or
        breaking out of the loop) cancels the call, which stops generation on the server."""
        request = calls.generate_request(question, collection, **options)
        return self._calls.stream_out("GenerateStream", request, calls.stream_event)

    def info(self) -> GeneratorInfo:
        return self._calls.unary(calls.INFO)


class AsyncGeneratorClient:
    """``GeneratorClient`` for asyncio code: ``ask`` and ``info`` are coroutines, ``ask_stream``
    an async iterator. Use it as ``async with AsyncGeneratorClient(...) as generator:``."""

    def __init__(
        self,
        target: Target = GENERATOR_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
    ) -> None:
        self._calls = AsyncTransport(
            target,
            GENERATOR_SERVICE,
            generator_pb2_grpc.GeneratorServiceStub,
            options or ConnectionOptions(),
            timeout,
        )

    async def __aenter__(self) -> "AsyncGeneratorClient":
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._calls.close()

    async def ask(self, question: str, collection: str, **options: Unpack[AskOptions]) -> Answer:
        return await self._calls.unary(calls.GENERATE, question, collection, **options)

    def ask_stream(
        self, question: str, collection: str, **options: Unpack[AskOptions]
    ) -> AsyncGenerator[str | Answer, None]:
        """Text pieces as generated, then the ``Answer``; leaving the loop early cancels the
        call, which stops generation on the server."""
        request = calls.generate_request(question, collection, **options)
        return self._calls.stream_out("GenerateStream", request, calls.stream_event)

    async def info(self) -> GeneratorInfo:
        return await self._calls.unary(calls.INFO)
