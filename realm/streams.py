"""Client streams with an idle and a total time limit."""

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from realm.errors import DeadlineExceeded

MessageT = TypeVar("MessageT")


async def paced(
    messages: AsyncIterator[MessageT], idle_s: float, max_s: float, method: str
) -> AsyncIterator[MessageT]:
    """The messages of a client stream, failing it once it goes ``idle_s`` without a message or
    stays open past ``max_s``: a stream that never ends would otherwise hold its memory and its
    place under the server's concurrency caps for ever."""
    loop = asyncio.get_running_loop()
    closes_at = loop.time() + max_s
    iterator = aiter(messages)
    while True:
        left = closes_at - loop.time()
        wait = min(idle_s, left)
        try:
            message = await asyncio.wait_for(anext(iterator), max(wait, 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError:
            if wait < idle_s:
                raise DeadlineExceeded(
                    f"the {method} stream was open longer than max_stream_s={max_s:g}; split "
                    "the data into several streams"
                ) from None
            raise DeadlineExceeded(
                f"the {method} stream sent no message for stream_idle_s={idle_s:g} seconds; "
                "send continuously or end the stream"
            ) from None
        yield message
