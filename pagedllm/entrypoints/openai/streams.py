"""Helpers over AsyncLLM output streams."""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from pagedllm.outputs import RequestOutput

T = TypeVar("T")


async def released_on_hang_up(chunks: AsyncIterator[T]) -> AsyncIterator[T]:
    """A response body that lets go of its request when the client hangs up mid-stream.

    Starlette cancels the body's task on a disconnect; anyio's task group keeps that
    CancelledError in a reference cycle, and its traceback holds every stream frame it left
    (the handler's, AsyncLLM's) with their locals: the request and its prompt, any size,
    until a full collection, rare in a server. Those frames have finished: clear them."""
    try:
        async for chunk in chunks:
            yield chunk
    except asyncio.CancelledError as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


def streamed_response(
    chunks: AsyncIterator[Any], media_type: str = "text/event-stream"
) -> StreamingResponse:
    """Every streamed reply's response: ``chunks`` released on a hang-up
    (``released_on_hang_up``)."""
    return StreamingResponse(released_on_hang_up(chunks), media_type=media_type)


async def merge_streams(
    generators: list[AsyncGenerator[RequestOutput, None]],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several output streams as items arrive, tagged with their position.

    Closing the merged stream (client gone) cancels every producer, which aborts its request.
    """
    if len(generators) == 1:
        async with contextlib.aclosing(generators[0]) as only:  # closed (aborted) with this
            async for item in only:
                yield 0, item
        return
    # Bounded: a producer waits while its item is unread, so a slow reader's outputs are
    # merged in the request's own stream (AsyncLLM's RequestStream), not queued here.
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=len(generators))
    done = object()

    async def pump(i: int, gen: AsyncGenerator[RequestOutput, None]) -> None:
        # aclosing: a pump cancelled while waiting to put (the reader gone) still closes its
        # stream, which aborts its request; nothing is put after a cancellation (no one reads).
        try:
            async with contextlib.aclosing(gen):
                async for item in gen:
                    await queue.put((i, item))
        except Exception as exc:
            await queue.put((i, exc))
        else:
            await queue.put((i, done))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generators)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()


async def last_output(outputs: AsyncGenerator[RequestOutput, None]) -> RequestOutput:
    final = None
    async for output in outputs:
        final = output
    assert final is not None and final.finished, "a FINAL_ONLY request ends with one output"
    return final
