"""Hostile-input probe 7 of /v1/responses: a background run that fails before its stream
starts tells its readers why, an engine refusal fails the run (it does not stay in_progress
for good), the events kept after runs end are bounded in bytes, a background response too
large to store is refused, a failed response keeps its history, and a chain of long turns
is not measured whole on every store put. Driven by a scripted engine (no model, no
server)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from pagedllm.engine.exceptions import EngineOverloadedError
from pagedllm.entrypoints.openai import serving_responses
from pagedllm.entrypoints.openai.background_responses import BackgroundRuns
from pagedllm.entrypoints.openai.reasoning import get_reasoning_parser
from pagedllm.entrypoints.openai.responses_protocol import ResponsesRequest
from pagedllm.entrypoints.openai.serving_chat import ChatHandler
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.serving_responses import ResponsesHandler, ResponseStore
from tests.server.test_reasoning_stream import PIECES, ScriptedEngine, ScriptedRenderer


class RefusingEngine(ScriptedEngine):
    """An engine that refuses every request at admission with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(PIECES)
        self.error = error

    async def prepare(self, prompt, params, request_id, priority=0):
        raise self.error


def handler_over(engine: ScriptedEngine, runs: BackgroundRuns | None = None) -> ResponsesHandler:
    chat = ChatHandler(
        engine,  # type: ignore[arg-type]
        ServedModels(["m"], "m", 4096),
        ScriptedRenderer(),  # type: ignore[arg-type]
        get_reasoning_parser("deepseek_r1"),
        {},
    )
    return ResponsesHandler(chat, ResponseStore(10), runs or BackgroundRuns(10))


async def background(handler: ResponsesHandler, stream: bool, **fields) -> tuple[str, list]:
    """Create a background response; its id and (streamed) the events its reader got."""
    body = {"input": "q", "background": True, "stream": stream, **fields}
    response = await handler.create(ResponsesRequest.model_validate(body))
    if not stream:
        return json.loads(response.body)["id"], []
    chunks = [chunk.decode() async for chunk in response.body_iterator]
    events = [json.loads(chunk.split("data: ", 1)[1]) for chunk in chunks]
    return events[0]["response"]["id"], events


async def until_ended(handler: ResponsesHandler, response_id: str) -> None:
    for _ in range(500):
        if not handler.runs.is_running(response_id):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{response_id} still running")


def test_a_streamed_run_refused_at_admission_streams_the_error():
    """A background stream whose request the chat path refused (a prompt past the
    context, say) answered 200 with no event at all; the failure was only in the store."""
    handler = handler_over(RefusingEngine(ValueError("The prompt is too long.")))

    async def go():
        _, events = await background(handler, stream=True)
        return events

    events = asyncio.run(go())
    assert [e["type"] for e in events] == ["response.created", "error", "response.failed"]
    assert [e["sequence_number"] for e in events] == [0, 1, 2]
    assert events[1]["message"] == "The prompt is too long."
    assert events[1]["code"] == "invalid_request_error"
    failed = events[2]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] == events[1]["message"]


def test_an_engine_refusal_fails_the_run_instead_of_leaving_it_in_progress():
    """An engine error (overloaded: --max-waiting-requests) escaped the run, which only the
    guard logged: the stored response stayed in_progress for good, never evicted (a live
    one), never cancellable (400) and never continued (400, still in progress)."""
    handler = handler_over(RefusingEngine(EngineOverloadedError("Too many requests waiting.")))

    async def go():
        response_id, _ = await background(handler, stream=False)
        await until_ended(handler, response_id)
        return handler.store.get(response_id).response

    stored = asyncio.run(go())
    assert stored["status"] == "failed"
    assert stored["error"] == {"code": "server_error", "message": "Too many requests waiting."}


def test_unexpected_errors_fail_the_run_without_their_text():
    handler = handler_over(RefusingEngine(RuntimeError("/secret/path exploded")))

    async def go():
        response_id, events = await background(handler, stream=True)
        await until_ended(handler, response_id)
        return handler.store.get(response_id).response, events

    stored, events = asyncio.run(go())
    assert stored["status"] == "failed"
    assert "secret" not in json.dumps(stored) and "secret" not in json.dumps(events)
    assert events[-1]["type"] == "response.failed"


def test_kept_events_of_ended_runs_are_bounded_in_bytes():
    """Every event that carries the response echoes the instructions: a streamed run of
    20 MB instructions keeps 60 MB after it ends, and 64 runs were kept, by no byte bound."""
    runs = BackgroundRuns(10, max_finished_bytes=40_000)
    handler = handler_over(ScriptedEngine(PIECES), runs)
    instructions = "x" * 5_000  # echoed by created, in_progress and completed

    async def go():
        ids = []
        for _ in range(4):
            response_id, _ = await background(handler, True, instructions=instructions)
            await until_ended(handler, response_id)
            ids.append(response_id)
        return ids

    ids = asyncio.run(go())
    kept = [i for i in ids if runs.get(i) is not None]
    assert kept == ids[-len(kept) :] and 1 <= len(kept) < 4  # the newest, within the bound
    assert sum(runs.get(i).size for i in kept) <= 40_000
    assert runs._finished_bytes == sum(runs.get(i).size for i in kept)
    # A deleted response's events go, and their bytes with them.
    asyncio.run(handler.delete(kept[-1]))
    assert runs._finished_bytes == sum(runs.get(i).size for i in kept[:-1])


def test_one_run_past_the_byte_bound_is_not_kept():
    runs = BackgroundRuns(10, max_finished_bytes=1_000)
    handler = handler_over(ScriptedEngine(PIECES), runs)

    async def go():
        response_id, events = await background(handler, True, instructions="y" * 2_000)
        await until_ended(handler, response_id)
        return response_id, events

    response_id, events = asyncio.run(go())
    assert events[-1]["type"] == "response.completed"  # its reader had it whole
    assert runs.get(response_id) is None and runs._finished_bytes == 0


class FailingOnce(ScriptedEngine):
    """Refuses its first request at admission, then answers as scripted."""

    def __init__(self) -> None:
        super().__init__(PIECES)
        self.refused = False

    async def prepare(self, prompt, params, request_id, priority=0):
        if not self.refused:
            self.refused = True
            raise ValueError("The prompt is too long.")
        return await super().prepare(prompt, params, request_id, priority)


def test_a_turn_continuing_a_failed_response_keeps_the_history():
    """A failed background response was stored with no conversation: a turn continuing
    from it was answered as if nothing came before, with no word that the history was
    dropped. It is kept as a cancelled one's is (the earlier turns and its input)."""
    handler = handler_over(FailingOnce())

    async def go():
        first, _ = await background(handler, stream=False, input="remember 42")
        await until_ended(handler, first)
        assert handler.store.get(first).response["status"] == "failed"
        body = {"input": "what number?", "previous_response_id": first}
        response = await handler.create(ResponsesRequest.model_validate(body))
        return handler.store.get(json.loads(response.body)["id"]).conversation

    conversation = asyncio.run(go())
    assert [m["content"] for m in conversation[:2]] == ["remember 42", "what number?"]


def test_a_background_response_too_large_to_store_is_refused():
    """Past --max-stored-response-bytes the queued entry was not kept, yet its run started:
    retrieve and cancel answered 404 while it ran on."""
    handler = handler_over(ScriptedEngine(PIECES))
    handler.store = ResponseStore(10, max_bytes=2_000)

    async def go():
        await background(handler, stream=False, input="z" * 5_000)

    with pytest.raises(ValueError, match="too large to store") as caught:
        asyncio.run(go())
    assert caught.value.field == "background"
    assert len(handler.store) == 0 and not handler.runs._running


def test_a_chain_of_turns_is_not_measured_whole_on_every_put(monkeypatch):
    """The store measured each entry's whole conversation as JSON on every put (three per
    background turn), on the event loop: at 200 MB of chained turns that held every other
    request 0.8 s a put. A turn now measures only what it adds."""
    measured: list[int] = []

    def dumps(value, **kw):
        text = json.dumps(value, **kw)
        measured.append(len(text))
        return text

    monkeypatch.setattr(serving_responses, "json", SimpleNamespace(dumps=dumps, loads=json.loads))
    handler = handler_over(ScriptedEngine(PIECES))
    turn = 50_000

    async def go():
        previous = None
        for letter in "abc":
            fields = {"input": letter * turn}
            if previous is not None:
                fields["previous_response_id"] = previous
            previous, _ = await background(handler, stream=False, **fields)
            await until_ended(handler, previous)
        return handler.store.get(previous)

    last = asyncio.run(go())
    assert last.response["status"] == "completed" and len(last.conversation) == 6
    assert max(measured) < 2 * turn  # never two turns' text at once
    exact = len(json.dumps(last.conversation))  # the sum of its parts, near enough
    assert abs(serving_responses.conversation_size(last) - exact) < 100
