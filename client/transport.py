"""The two ways a call travels: blocking (``SyncTransport``) and asyncio (``AsyncTransport``).

Both take the RPC descriptions of ``realm.client.calls``, put the connection's timeout and bearer
token on each call and turn a failed call into its typed exception (``translated_errors``, the
one translation path). Channels come from ``realm.channels``: TLS, retries, keepalive.
"""

from collections.abc import AsyncGenerator, AsyncIterable, Callable, Generator, Iterable
from typing import Any, TypeVar

from grpc import aio

from realm.channels import ConnectionOptions, Target, aio_channel, sync_channel
from realm.client.calls import Arguments, Result, Rpc, TimeoutKind
from realm.client.errors import translated_errors

Event = TypeVar("Event")


def _timeouts(options: ConnectionOptions, timeout: float | None) -> dict[TimeoutKind, float | None]:
    return {
        "call": options.timeout if timeout is None else timeout,
        "generate": options.generate_timeout if timeout is None else timeout,
        "unbounded": None,
    }


class SyncTransport:
    """One blocking channel to one service."""

    def __init__(
        self,
        target: Target,
        service: str,
        stub: Callable[[Any], Any],
        options: ConnectionOptions,
        timeout: float | None,
    ) -> None:
        """``timeout`` overrides the options' timeouts for every bounded call."""
        self.timeouts = _timeouts(options, timeout)
        self._metadata = options.metadata
        self._channel = sync_channel(target, [service], options)
        self._stub = stub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def unary(
        self, rpc: Rpc[Arguments, Result], *args: Arguments.args, **kwargs: Arguments.kwargs
    ) -> Result:
        request = rpc.build(*args, **kwargs)
        with translated_errors():
            response = getattr(self._stub, rpc.method)(
                request, timeout=self.timeouts[rpc.timeout], metadata=self._metadata
            )
        return rpc.parse(response)

    def stream_in(
        self, method: str, requests: Iterable[Any], parse: Callable[[Any], Result]
    ) -> Result:
        """A client-streaming call, without deadline: the server answers when it has all."""
        with translated_errors():
            response = getattr(self._stub, method)(requests, timeout=None, metadata=self._metadata)
        return parse(response)

    def stream_out(
        self, method: str, request: Any, parse: Callable[[Any], Event]
    ) -> Generator[Event, None, None]:
        """A server-streaming call as a generator; closing it early cancels the call."""
        call = getattr(self._stub, method)(
            request, timeout=self.timeouts["generate"], metadata=self._metadata
        )
        try:
            with translated_errors():
                for message in call:
                    yield parse(message)
        finally:
            call.cancel()


class AsyncTransport:
    """One asyncio channel to one service."""

    def __init__(
        self,
        target: Target,
        service: str,
        stub: Callable[[Any], Any],
        options: ConnectionOptions,
        timeout: float | None,
    ) -> None:
        self.timeouts = _timeouts(options, timeout)
        self._metadata = options.metadata
        self._channel = aio_channel(target, [service], options)
        self._stub = stub(self._channel)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def unary(
        self, rpc: Rpc[Arguments, Result], *args: Arguments.args, **kwargs: Arguments.kwargs
    ) -> Result:
        request = rpc.build(*args, **kwargs)
        with translated_errors():
            response = await getattr(self._stub, rpc.method)(
                request, timeout=self.timeouts[rpc.timeout], metadata=self._metadata
            )
        return rpc.parse(response)

    async def stream_in(
        self, method: str, requests: AsyncIterable[Any], parse: Callable[[Any], Result]
    ) -> Result:
        with translated_errors():
            response = await getattr(self._stub, method)(
                requests, timeout=None, metadata=self._metadata
            )
        return parse(response)

    async def stream_out(
        self, method: str, request: Any, parse: Callable[[Any], Event]
    ) -> AsyncGenerator[Event, None]:
        call: aio.UnaryStreamCall[Any, Any] = getattr(self._stub, method)(
            request, timeout=self.timeouts["generate"], metadata=self._metadata
        )
        try:
            with translated_errors():
                async for message in call:
                    yield parse(message)
        finally:
            call.cancel()
