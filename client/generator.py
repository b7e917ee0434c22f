"""Clients of the generator service: ``GeneratorClient`` (blocking) and ``AsyncGeneratorClient``
(asyncio): answers with their sources, whole or streamed.

UNAVAILABLE is retried by gRPC's own retry policy (a streamed call only until its first message
arrives); connection settings are ``realm.channels.ConnectionOptions``.
"""

from collections.abc import AsyncGenerator, Generator
from typing import Unpack

from realm.channels import GENERATOR_SERVICE, ConnectionOptions, Target
from realm.client import calls
from realm.client.transport import AsyncClient, SyncClient
from realm.client.types import Answer, AskOptions, GeneratorInfo
from realm.ports import GENERATOR_TARGET
from realm.v1 import generator_pb2_grpc


class GeneratorClient(SyncClient):
    """Talks to one generator target (``host:port``, or ``dns:///name`` for several replicas)."""

    def __init__(
        self,
        target: Target = GENERATOR_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
    ) -> None:
        """``options`` holds TLS, token, retries and keepalive; ``timeout`` overrides its
        timeouts (the common case, hence its own argument)."""
        super().__init__(
            target, GENERATOR_SERVICE, generator_pb2_grpc.GeneratorServiceStub, timeout, options
        )

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


class AsyncGeneratorClient(AsyncClient):
    """``GeneratorClient`` for asyncio code: ``ask`` and ``info`` are coroutines, ``ask_stream``
    an async iterator. Use it as ``async with AsyncGeneratorClient(...) as generator:``."""

    def __init__(
        self,
        target: Target = GENERATOR_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
    ) -> None:
        super().__init__(
            target, GENERATOR_SERVICE, generator_pb2_grpc.GeneratorServiceStub, timeout, options
        )

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
