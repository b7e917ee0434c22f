"""The two ways a call travels: blocking (``SyncTransport``) and asyncio (``AsyncTransport``).

Both take the RPC descriptions of ``realm.client.calls``, put the connection's timeout and bearer
token on each call and turn a failed call into its typed exception (``translated_errors``, the
one translation path). Channels come from ``realm.channels``: TLS, retries, keepalive.
"""

import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

from grpc import aio

from realm import tracing
from realm.channels import ConnectionOptions, Target, aio_channel, sync_channel
from realm.client.calls import Arguments, Result, Rpc, TimeoutKind
from realm.client.errors import translated_errors

Event = TypeVar("Event")


@contextmanager
def traced(span: tracing.ClientCall) -> Iterator[None]:
    """Ends the call's span when the block ends, marked failed when it raised."""
    try:
        yield
    except GeneratorExit:  # the caller closed a stream early: not a failure
        span.end()
        raise
    except BaseException as error:
        span.end(error)
        raise
    span.end()


class _Transport:
    """What both transports hold: the stub over their channel (which they close), the timeout
    of each kind of call, and the metadata (the bearer token) every call carries."""

    def __init__(
        self,
        channel: Any,
        service: str,
        stub: Callable[[Any], Any],
        options: ConnectionOptions,
        timeout: float | None,
    ) -> None:
        """``timeout`` overrides the options' timeouts for every bounded call."""
        self._service = service
        self.timeouts: dict[TimeoutKind, float | None] = {
            "call": options.timeout if timeout is None else timeout,
            "generate": options.generate_timeout if timeout is None else timeout,
            "unbounded": None,
        }
        self._metadata = options.metadata
        self._channel = channel
        self._stub = stub(channel)

    def _call(self, method: str) -> tuple[tracing.ClientCall, tuple[tuple[str, str], ...]]:
        """The call's span (when the application traces) and its metadata: the connection's,
        the span's trace context, and a request id of the call's own (the servers log it, and
        a cluster drops a write re-sent with the same id; gRPC's retries keep it)."""
        span = tracing.ClientCall(f"/{self._service}/{method}")
        request_id = ("x-request-id", uuid.uuid4().hex[:16])
        return span, (*self._metadata, *span.metadata(), request_id)


class SyncTransport(_Transport):
    """One blocking channel to one service."""

    def close(self) -> None:
        self._channel.close()

    def unary(
        self, rpc: Rpc[Arguments, Result], *args: Arguments.args, **kwargs: Arguments.kwargs
    ) -> Result:
        request = rpc.build(*args, **kwargs)
        span, metadata = self._call(rpc.method)
        with traced(span), translated_errors():
            response = getattr(self._stub, rpc.method)(
                request, timeout=self.timeouts[rpc.timeout], metadata=metadata
            )
        return rpc.parse(response)

    def stream_in(
        self, method: str, requests: Iterable[Any], parse: Callable[[Any], Result]
    ) -> Result:
        """A client-streaming call, without deadline: the server answers when it has all."""
        span, metadata = self._call(method)
        with traced(span), translated_errors():
            response = getattr(self._stub, method)(requests, timeout=None, metadata=metadata)
        return parse(response)

    def stream_out(
        self, method: str, request: Any, parse: Callable[[Any], Event]
    ) -> Generator[Event, None, None]:
        """A server-streaming call as a generator; closing it early cancels the call."""
        span, metadata = self._call(method)
        call = getattr(self._stub, method)(
            request, timeout=self.timeouts["generate"], metadata=metadata
        )
        try:
            with traced(span), translated_errors():
                for message in call:
                    yield parse(message)
        finally:
            call.cancel()


class AsyncTransport(_Transport):
    """One asyncio channel to one service."""

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def unary(
        self, rpc: Rpc[Arguments, Result], *args: Arguments.args, **kwargs: Arguments.kwargs
    ) -> Result:
        request = rpc.build(*args, **kwargs)
        span, metadata = self._call(rpc.method)
        with traced(span), translated_errors():
            response = await getattr(self._stub, rpc.method)(
                request, timeout=self.timeouts[rpc.timeout], metadata=metadata
            )
        return rpc.parse(response)

    async def stream_in(
        self, method: str, requests: AsyncIterable[Any], parse: Callable[[Any], Result]
    ) -> Result:
        span, metadata = self._call(method)
        with traced(span), translated_errors():
            response = await getattr(self._stub, method)(requests, timeout=None, metadata=metadata)
        return parse(response)

    async def stream_out(
        self, method: str, request: Any, parse: Callable[[Any], Event]
    ) -> AsyncGenerator[Event, None]:
        span, metadata = self._call(method)
        call: aio.UnaryStreamCall[Any, Any] = getattr(self._stub, method)(
            request, timeout=self.timeouts["generate"], metadata=metadata
        )
        try:
            with traced(span), translated_errors():
                async for message in call:
                    yield parse(message)
        finally:
            call.cancel()


class SyncClient:
    """Base of the blocking clients: one transport to one service, closed on leaving ``with``."""

    def __init__(
        self,
        target: Target,
        service: str,
        stub: Callable[[Any], Any],
        timeout: float | None,
        options: ConnectionOptions | None,
    ) -> None:
        options = options or ConnectionOptions()
        channel = sync_channel(target, [service], options)
        self._calls = SyncTransport(channel, service, stub, options, timeout)

    def __enter__(self) -> Self:
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


class AsyncClient:
    """Base of the asyncio clients: one transport, closed on leaving ``async with``."""

    def __init__(
        self,
        target: Target,
        service: str,
        stub: Callable[[Any], Any],
        timeout: float | None,
        options: ConnectionOptions | None,
    ) -> None:
        options = options or ConnectionOptions()
        channel = aio_channel(target, [service], options)
        self._calls = AsyncTransport(channel, service, stub, options, timeout)

    async def __aenter__(self) -> Self:
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
