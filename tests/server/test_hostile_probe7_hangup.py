"""Hostile-input probe 7: a client that hangs up mid-stream leaves nothing of its request
behind. Starlette cancels the response body's task; anyio's task group keeps that
CancelledError in a reference cycle whose traceback held every stream frame it left, so a
20 MB prompt stayed in the API server until a full collection (RSS grew ~38 MB a hang-up).
Driven by a scripted engine (no model, no server), with the collector off: what goes, goes
by reference count."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from pagedllm.entrypoints.openai.background_responses import BackgroundRuns
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest
from pagedllm.entrypoints.openai.responses_protocol import ResponsesRequest
from pagedllm.entrypoints.openai.serving_chat import ChatHandler
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.serving_responses import ResponsesHandler, ResponseStore
from tests.server.test_reasoning_stream import ScriptedRenderer


class Prompt:
    """Stands for the request's prepared prompt (any size)."""


class StalledEngine:
    """Admits a request and never produces an output: the client hangs up first."""

    def __init__(self) -> None:
        self.prompts: list[weakref.ref] = []

    async def prepare(self, prompt, params, request_id, priority=0):
        held = Prompt()
        self.prompts.append(weakref.ref(held))
        return held

    def generate_prepared(self, prepared):
        return stalled(prepared)


async def stalled(prepared):
    """As AsyncLLM's stream: its frame holds the prepared request while it waits."""
    await asyncio.Event().wait()
    yield prepared


async def hang_up_after_first_chunk(response) -> list[dict]:
    sent: list[dict] = []
    first_body = asyncio.Event()

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body":
            first_body.set()

    async def receive():
        await first_body.wait()
        return {"type": "http.disconnect"}

    await response({"type": "http", "method": "POST", "path": "/"}, receive, send)
    return sent


def freed_after_hang_up(make_response) -> None:
    """Run ``make_response(engine)``'s stream, hang up after its first chunk, and check the
    request's prompt was freed by reference count (the collector off)."""
    engine = StalledEngine()

    async def run() -> list[dict]:
        return await hang_up_after_first_chunk(await make_response(engine))

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        sent = asyncio.run(run())
        assert sent[0]["type"] == "http.response.start"
        assert any(m["type"] == "http.response.body" for m in sent)
        assert engine.prompts, "the request reached the engine"
        # Freed at the hang-up, not left for a full collection.
        assert all(ref() is None for ref in engine.prompts)
    finally:
        if enabled:
            gc.enable()


def chat_handler(engine: StalledEngine) -> ChatHandler:
    return ChatHandler(
        engine,  # type: ignore[arg-type]
        ServedModels(["m"], "m", 4096),
        ScriptedRenderer(),  # type: ignore[arg-type]
        None,
        {},
    )


@pytest.mark.parametrize("n", [1, 2])
def test_chat_stream_hang_up_frees_the_prompt(n: int) -> None:
    async def make(engine: StalledEngine):
        request = ChatCompletionRequest(
            model="m", messages=[{"role": "user", "content": "q"}], stream=True, n=n
        )
        return await chat_handler(engine).create(request)

    freed_after_hang_up(make)


def test_responses_stream_hang_up_frees_the_prompt() -> None:
    async def make(engine: StalledEngine):
        handler = ResponsesHandler(chat_handler(engine), ResponseStore(10), BackgroundRuns(10))
        return await handler.create(ResponsesRequest.model_validate({"input": "q", "stream": True}))

    freed_after_hang_up(make)
