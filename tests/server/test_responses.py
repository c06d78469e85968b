"""OpenAI's Responses API (/v1/responses) through the official openai client: the same
prompts and answers as the chat endpoint (checked against a chat twin at temperature 0),
previous_response_id and retrieval from the bounded store, the event stream, incomplete
responses, json_schema text formats, function calls and their outputs, and the 400s for
what the server cannot honour. Reasoning items come from a scripted engine (SmolLM2 does
not think)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import jsonschema
import openai
import pytest

from pagedllm.entrypoints.openai.api_server import make_parser
from pagedllm.entrypoints.openai.background_responses import BackgroundRuns
from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.limits import ServerLimits
from pagedllm.entrypoints.openai.reasoning import get_reasoning_parser
from pagedllm.entrypoints.openai.responses_protocol import ResponsesRequest
from pagedllm.entrypoints.openai.serving_chat import ChatHandler
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.serving_responses import (
    ResponsesHandler,
    ResponseStore,
    StoredResponse,
)
from tests.server.conftest import API_KEY, MODEL
from tests.server.test_reasoning_stream import PIECES, ScriptedEngine, ScriptedRenderer

HELLO = "Say hello in one short sentence."
ASK = "What is the weather in Paris?"
PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": PARAMETERS,
    "strict": True,
}
CHAT_WEATHER = {
    "type": "function",
    "function": {k: v for k, v in WEATHER.items() if k != "type"},
}
FORCED = {"type": "function", "name": "get_weather"}
TOOL_RESULT = '{"temperature": 21, "unit": "celsius"}'


def chat_twin(client, messages, max_tokens, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, **kw
    )


def create(client, **kw):
    return client.responses.create(model=MODEL, temperature=0, **kw)


# -- answers, through the chat path ----------------------------------------------------------


def test_plain_input_answers_as_chat_does(openai_client):
    reply = create(openai_client, input=HELLO, max_output_tokens=16, metadata={"k": "v"})
    assert reply.object == "response" and reply.id.startswith("resp_") and reply.model == MODEL
    assert reply.status in ("completed", "incomplete") and reply.metadata == {"k": "v"}
    message = reply.output[-1]
    assert message.type == "message" and message.role == "assistant" and reply.output_text
    usage = reply.usage
    assert 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    twin = chat_twin(openai_client, [{"role": "user", "content": HELLO}], 16)
    assert reply.output_text == twin.choices[0].message.content
    assert usage.input_tokens == twin.usage.prompt_tokens


def test_instructions_are_the_system_message(openai_client):
    pirate = "You are a pirate. Answer like one."
    reply = create(openai_client, input=HELLO, instructions=pirate, max_output_tokens=8)
    assert reply.instructions == pirate
    twin = chat_twin(
        openai_client,
        [{"role": "system", "content": pirate}, {"role": "user", "content": HELLO}],
        8,
    )
    assert reply.usage.input_tokens == twin.usage.prompt_tokens
    assert reply.output_text == twin.choices[0].message.content


def test_list_input_with_an_earlier_assistant_turn(openai_client):
    items = [
        {"role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Nice to meet you, Ada."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
    ]  # fmt: skip
    reply = create(openai_client, input=items, max_output_tokens=10, extra_body={"unheard_of": 1})
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    twin = chat_twin(openai_client, messages, 10)
    assert reply.usage.input_tokens == twin.usage.prompt_tokens
    assert reply.output_text == twin.choices[0].message.content


def test_previous_response_id_continues_and_retrieve_returns_it(openai_client):
    first = create(openai_client, input="My name is Ada. Say hi.", max_output_tokens=12)
    second = create(
        openai_client, input="What is my name?", previous_response_id=first.id, max_output_tokens=12
    )
    assert second.previous_response_id == first.id
    # the second prompt holds the whole first exchange, then the new question
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    messages = [
        {"role": "user", "content": "My name is Ada. Say hi."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    twin = chat_twin(openai_client, messages, 12)
    assert second.usage.input_tokens == twin.usage.prompt_tokens
    assert second.output_text == twin.choices[0].message.content
    kept = openai_client.responses.retrieve(first.id)
    assert kept.id == first.id and kept.status == first.status
    assert kept.output_text == first.output_text and kept.usage == first.usage


def test_store_false_keeps_nothing(openai_client):
    reply = create(openai_client, input=HELLO, store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.retrieve(reply.id)
    assert reply.id in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        create(openai_client, input="And?", previous_response_id=reply.id, max_output_tokens=2)
    assert caught.value.param == "previous_response_id"


def test_cancel_answers_as_vllm_for_a_finished_response(openai_client):
    reply = create(openai_client, input=HELLO, max_output_tokens=2)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.cancel(reply.id)
    assert "Cannot cancel a synchronous response" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.cancel("resp_nothing_here")


# -- truncation ----------------------------------------------------------------------------

LONG = "alpha beta gamma delta " * 700  # more tokens than the server's 2048 context


def test_truncation_auto_keeps_the_latest_tokens(limited, tiny_chat_model):
    """On the tiny model's server (a 512-token context, one token per character): the
    bundled model's prefill of a full 2048-token context took ~10 s."""
    from openai import OpenAI

    client = OpenAI(base_url=limited.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    ask = dict(model=str(tiny_chat_model), temperature=0, input=LONG, max_output_tokens=4)
    with pytest.raises(openai.BadRequestError):  # "disabled", the default: refused
        client.responses.create(**ask)
    reply = client.responses.create(**ask, truncation="auto")
    assert reply.truncation == "auto" and reply.usage.input_tokens == 512 - 4
    assert reply.usage.output_tokens == 4


def test_truncate_prompt_tokens_on_chat_and_completions(openai_client):
    chat = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=3,
        extra_body={"truncate_prompt_tokens": 100, "ignore_eos": True},
    )  # fmt: skip
    assert chat.usage.prompt_tokens == 100 and chat.usage.completion_tokens == 3
    done = openai_client.completions.create(
        model=MODEL, prompt=LONG, max_tokens=3, echo=True,
        extra_body={"truncate_prompt_tokens": 7},
    )  # fmt: skip
    assert done.usage.prompt_tokens == 7 and len(done.choices[0].text) < 100
    with pytest.raises(openai.BadRequestError) as caught:  # -1: 2048 tokens, no room left
        openai_client.completions.create(
            model=MODEL, prompt=LONG, max_tokens=3, extra_body={"truncate_prompt_tokens": -1}
        )
    assert "2048" in caught.value.message
    for body in ({"prompt": "short"}, {"messages": [{"role": "user", "content": "short"}]}):
        with pytest.raises(openai.BadRequestError) as caught:  # past the context: named
            create = (openai_client.completions.create if "prompt" in body
                      else openai_client.chat.completions.create)  # fmt: skip
            create(model=MODEL, max_tokens=3, extra_body={"truncate_prompt_tokens": 10**15},
                   **body)  # fmt: skip
        assert "truncate_prompt_tokens must be at most" in caught.value.message
        assert caught.value.body["param"] == "truncate_prompt_tokens"
    after = openai_client.completions.create(model=MODEL, prompt="still", max_tokens=2)
    assert after.usage.completion_tokens == 2  # the server serves on


# -- background responses ------------------------------------------------------------------


def wait_for(client, response_id, statuses, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.responses.retrieve(response_id)
        if reply.status in statuses:
            return reply
        time.sleep(0.05)
    raise AssertionError(f"{response_id} never reached {statuses}: {reply.status}")


def test_background_response_runs_after_the_request_returns(openai_client):
    queued = create(openai_client, input=HELLO, max_output_tokens=8, background=True)
    assert queued.status == "queued" and queued.background and queued.output == []
    done = wait_for(openai_client, queued.id, ("completed", "incomplete"))
    foreground = create(openai_client, input=HELLO, max_output_tokens=8)
    assert done.output_text == foreground.output_text and done.background
    assert done.usage.output_tokens == foreground.usage.output_tokens
    with pytest.raises(openai.BadRequestError) as caught:  # finished: nothing to cancel
        openai_client.responses.cancel(queued.id)
    assert "status is 'completed'" in caught.value.message or "incomplete" in caught.value.message


def test_cancel_stops_a_background_response(openai_client, server):
    long = {"ignore_eos": True}
    queued = create(openai_client, input=HELLO, max_output_tokens=1500, background=True,
                    extra_body=long)  # fmt: skip
    wait_for(openai_client, queued.id, ("in_progress",))
    with pytest.raises(openai.BadRequestError) as caught:  # not finished: cannot continue it
        create(openai_client, input="And?", previous_response_id=queued.id, max_output_tokens=2)
    assert caught.value.param == "previous_response_id" and "in_progress" in caught.value.message
    cancelled = openai_client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.id == queued.id
    assert openai_client.responses.retrieve(queued.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.cancel(queued.id)
    assert_nothing_runs(server)  # its engine request was aborted
    # continuing from it keeps its input (the stored conversation was empty: dropped)
    continued = create(openai_client, input="And?", previous_response_id=queued.id,
                       max_output_tokens=2)  # fmt: skip
    fresh = create(openai_client, input="And?", max_output_tokens=2)
    assert continued.usage.input_tokens > fresh.usage.input_tokens + 2


def assert_nothing_runs(server, within_s: float = 10) -> None:
    """The engine's running gauge reaches 0 within ``within_s``: an abort reaches the engine
    process, and its count /metrics, a moment after the request that caused it returns."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with server.client() as http:
            metrics = http.get("/metrics").text
        running = [
            ln for ln in metrics.splitlines() if ln.startswith("pagedllm:num_requests_running")
        ]
        if running and float(running[0].split()[-1]) == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"still running: {running}")


def test_delete_forgets_a_response_and_stops_a_running_one(openai_client, server):
    """``DELETE /v1/responses/{id}``, as OpenAI: the response is gone (retrieve, continue and
    a second delete are 404s); a background one still running is stopped first."""
    done = create(openai_client, input=HELLO, max_output_tokens=2)
    with server.client() as http:
        reply = http.delete(f"/v1/responses/{done.id}")
        assert reply.status_code == 200
        assert reply.json() == {"id": done.id, "object": "response", "deleted": True}
        assert http.get(f"/v1/responses/{done.id}").status_code == 404
        assert http.delete(f"/v1/responses/{done.id}").status_code == 404
    with pytest.raises(openai.NotFoundError):
        create(openai_client, input="And?", previous_response_id=done.id, max_output_tokens=2)
    running = create(openai_client, input=HELLO, max_output_tokens=1500, background=True,
                     stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    response_id = next(iter(running)).response.id
    wait_for(openai_client, response_id, ("in_progress",))
    openai_client.responses.delete(response_id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(response_id)
    with server.client() as http:  # no events kept to stream it again either
        assert http.get(f"/v1/responses/{response_id}?stream=true").status_code in (400, 404)
    assert_nothing_runs(server, within_s=1)  # its 1,500 tokens take longer


def test_streamed_background_response_replays_from_a_sequence_number(openai_client):
    events = list(create(openai_client, input=HELLO, max_output_tokens=6, background=True,
                         stream=True))  # fmt: skip
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    response_id = events[0].response.id
    again = list(openai_client.responses.retrieve(response_id, stream=True, starting_after=2))
    assert [e.sequence_number for e in again] == list(range(3, len(events)))
    assert again[-1].response.output_text == events[-1].response.output_text
    stored = openai_client.responses.retrieve(response_id)
    assert stored.status in ("completed", "incomplete") and stored.background
    with pytest.raises(openai.BadRequestError) as caught:  # not a streamed background run
        reply = create(openai_client, input=HELLO, max_output_tokens=2)
        list(openai_client.responses.retrieve(reply.id, stream=True))
    assert caught.value.param == "stream"


# -- streaming ---------------------------------------------------------------------------


def test_stream_events_in_order_and_text_as_not_streamed(openai_client):
    kw = {"input": HELLO, "max_output_tokens": 16}
    events = list(create(openai_client, stream=True, **kw))
    types = [e.type for e in events]
    deltas = types.count("response.output_text.delta")
    assert deltas >= 1
    assert types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * deltas,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    plain = create(openai_client, **kw)
    assert text == plain.output_text == events[-4].text
    final = events[-1].response
    assert final.output_text == text and final.status == plain.status
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.output[0].id == events[2].item.id  # one id for the item throughout
    assert openai_client.responses.retrieve(final.id).output_text == text
    with openai_client.responses.stream(model=MODEL, temperature=0, **kw) as stream:
        for _ in stream:
            pass
        assert stream.get_final_response().output_text == text


def test_max_output_tokens_makes_it_incomplete(openai_client):
    kw = {
        "input": "Tell me a long story.",
        "max_output_tokens": 3,
        "extra_body": {"ignore_eos": True},
    }
    reply = create(openai_client, **kw)
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 3
    final = list(create(openai_client, stream=True, **kw))[-1]
    assert final.type == "response.completed" and final.response.status == "incomplete"


@pytest.mark.parametrize("value", [0, -3, -(10**400)], ids=["0", "-3", "-1e400"])
def test_max_output_tokens_below_one_is_a_400_naming_it(openai_client, value):
    """The 400 named max_tokens, the chat field it becomes, not the field the client sent."""
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            create(openai_client, input=HELLO, max_output_tokens=value, stream=stream)
        message = caught.value.message
        assert "max_output_tokens" in message and "max_tokens" not in message, message
        assert caught.value.param == "max_output_tokens"
        assert len(message) < 200, message  # -10**400 is not echoed
    assert create(openai_client, input=HELLO, max_output_tokens=1).usage.output_tokens == 1


# -- text formats and tools --------------------------------------------------------------


def test_json_schema_format_validates(openai_client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    text = {"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}}
    reply = create(openai_client, input="Describe a person as JSON.", text=text,
                   max_output_tokens=60)  # fmt: skip
    assert reply.status == "completed"
    jsonschema.validate(json.loads(reply.output_text), schema)
    assert reply.text.format.type == "json_schema"


def test_forced_function_call_then_its_output(openai_client):
    reply = create(openai_client, input=ASK, tools=[WEATHER], tool_choice=FORCED,
                   max_output_tokens=60)  # fmt: skip
    calls = [item for item in reply.output if item.type == "function_call"]
    assert len(calls) == 1 and reply.output_text == ""
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), PARAMETERS)
    assert reply.tools[0].name == "get_weather" and reply.tool_choice.name == "get_weather"

    result = {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}
    as_call = {"type": "function_call", "call_id": call.call_id, "name": call.name,
               "arguments": call.arguments}  # fmt: skip
    follow = create(openai_client, input=[{"role": "user", "content": ASK}, as_call, result],
                    tools=[WEATHER], tool_choice="none", max_output_tokens=10)  # fmt: skip
    tool_call = {"id": call.call_id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}  # fmt: skip
    messages = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": call.call_id, "content": TOOL_RESULT},
    ]
    twin = chat_twin(openai_client, messages, 10, tools=[CHAT_WEATHER], tool_choice="none")
    assert follow.usage.input_tokens == twin.usage.prompt_tokens
    assert follow.output_text == twin.choices[0].message.content
    # the same turn through previous_response_id: the stored call is in the prompt
    chained = create(openai_client, input=[result], previous_response_id=reply.id,
                     tools=[WEATHER], tool_choice="none", max_output_tokens=10)  # fmt: skip
    assert chained.usage.input_tokens == follow.usage.input_tokens
    assert chained.output_text == follow.output_text


def test_streamed_function_call(openai_client):
    events = list(create(openai_client, input=ASK, tools=[WEATHER], tool_choice=FORCED,
                         max_output_tokens=60, stream=True))  # fmt: skip
    types = [e.type for e in events]
    assert types[2] == "response.output_item.added" and events[2].item.type == "function_call"
    assert "response.function_call_arguments.delta" in types
    assert types[-3:] == [
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"
    ]  # fmt: skip
    streamed = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert streamed == events[-3].arguments == events[-1].response.output[0].arguments
    jsonschema.validate(json.loads(streamed), PARAMETERS)
    assert events[-2].item.call_id == events[2].item.call_id


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "web_search", "tools"),
        ({"background": True, "store": False}, "background", "background"),
        ({"include": ["file_search_call.results"]}, "file_search_call.results", "include"),
        ({"tool_choice": {"type": "web_search_preview"}}, "web_search_preview", "tool_choice"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input_image", "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference", "input"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_naming_it(openai_client, extra, named, param):
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(**body)
    assert named in caught.value.message and caught.value.param == param


# -- the store ---------------------------------------------------------------------------


def test_the_store_is_bounded_oldest_first():
    store = ResponseStore(2)
    for name in "abc":
        store.put(name, StoredResponse({"id": name}, []))
    assert store.get("a") is None and len(store) == 2
    assert store.get("b").response == {"id": "b"} and store.get("c").response == {"id": "c"}
    nothing = ResponseStore(0)
    nothing.put("a", StoredResponse({"id": "a"}, []))
    assert nothing.get("a") is None and len(nothing) == 0
    with pytest.raises(ValueError, match="max-stored-responses"):
        ResponseStore(-1)


def test_running_background_responses_are_not_evicted():
    """Other clients' responses pushed a running background one out: its retrieval became a
    500 and its cancel a 404 while it ran on. Live ones stay; finished ones go first."""
    store = ResponseStore(2)
    store.put("bg", StoredResponse({"id": "bg", "status": "in_progress", "background": True}, []))
    for name in "abcd":
        store.put(name, StoredResponse({"id": name, "status": "completed"}, []))
    assert store.get("bg") is not None and store.get("d") is not None and len(store) == 2
    store.put("bg", StoredResponse({"id": "bg", "status": "completed"}, []))  # it ended
    for name in "ef":
        store.put(name, StoredResponse({"id": name, "status": "completed"}, []))
    assert store.get("bg") is None and store.get("f") is not None and len(store) == 2


def test_the_store_is_bounded_in_bytes():
    """A client cannot make the server hold max_stored_responses huge responses: the
    store also keeps at most max_bytes of JSON, oldest evicted first."""
    big = [{"role": "user", "content": "x" * 400}]
    store = ResponseStore(100, max_bytes=1000)
    for name in "abc":
        store.put(name, StoredResponse({"id": name}, big))
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None
    store.put("huge", StoredResponse({"id": "huge"}, [{"content": "y" * 5000}]))
    assert store.get("huge") is None and store.get("c") is not None  # too big: not kept
    store.put("c", StoredResponse({"id": "c"}, big))  # replacing counts once
    assert len(store) == 2 and store.get("b") is not None


def test_the_store_flag():
    parser = make_parser()
    assert ServerLimits.from_args(parser.parse_args([])).max_stored_responses == 1000
    args = parser.parse_args(["--max_stored_responses", "5"])
    assert ServerLimits.from_args(args).max_stored_responses == 5
    with pytest.raises(ValueError, match="max-stored-responses"):
        ServerLimits.from_args(parser.parse_args(["--max-stored-responses", "-1"]))


# -- reasoning, from a scripted engine -------------------------------------------------------


def scripted(store: ResponseStore | None = None, max_background: int = 10) -> ResponsesHandler:
    chat = ChatHandler(
        ScriptedEngine(PIECES),  # type: ignore[arg-type]
        ServedModels(["m"], "m", 4096),
        ScriptedRenderer(),  # type: ignore[arg-type]
        get_reasoning_parser("deepseek_r1"),
        {},
    )
    store = store if store is not None else ResponseStore(10)
    return ResponsesHandler(chat, store, BackgroundRuns(max_background))


def run(handler: ResponsesHandler, **fields):
    async def go():
        response = await handler.create(ResponsesRequest.model_validate({"input": "q", **fields}))
        if not fields.get("stream"):
            return json.loads(response.body)
        events = [e.decode() async for e in response.body_iterator]
        return [json.loads(e.split("data: ", 1)[1]) for e in events]

    return asyncio.run(go())


REASONING, CONTENT = "Let me think: 9.8 > 9.11.", "\n\nThe answer is 9.8."


def test_reasoning_item_before_the_message():
    body = run(scripted())
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": REASONING}]
    assert message["content"][0]["text"] == CONTENT
    usage = body["usage"]
    # the scripted renderer's tokens are characters; the engine sent one token in all
    assert usage["output_tokens_details"]["reasoning_tokens"] == min(len(REASONING), 1)


def test_streamed_reasoning_events():
    events = run(scripted(), stream=True)
    types = [e["type"] for e in events]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert events[2]["item"]["type"] == "reasoning"
    reasoning = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert reasoning == REASONING
    done = types.index("response.reasoning_text.done")
    assert types[done : done + 3] == [
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done"
    ]  # fmt: skip
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == CONTENT and types.index("response.output_text.delta") > done
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == len(PIECES)


def test_an_evicted_response_cannot_be_continued():
    handler = scripted(ResponseStore(1))
    first, second = run(handler)["id"], run(handler)["id"]
    assert handler.retrieve(second, stream=False, starting_after=None).status_code == 200
    with pytest.raises(OpenAIError) as caught:
        run(handler, previous_response_id=first)
    assert caught.value.status == 404 and first in caught.value.message


def test_output_logprobs_when_included(openai_client):
    kw = {"input": HELLO, "max_output_tokens": 4, "top_logprobs": 2,
          "include": ["message.output_text.logprobs"]}  # fmt: skip
    reply = create(openai_client, **kw)
    logprobs = reply.output[-1].content[0].logprobs
    assert len(logprobs) == reply.usage.output_tokens
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in logprobs)
    events = list(create(openai_client, stream=True, **kw))
    streamed = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert [lp.token for lp in streamed] == [lp.token for lp in logprobs]
    # (a cached prefix is computed another way: the values agree to rounding)
    assert [lp.logprob for lp in streamed] == pytest.approx(
        [lp.logprob for lp in logprobs], abs=0.01
    )
    final = events[-1].response.output[-1].content[0].logprobs
    assert [(lp.token, lp.logprob) for lp in final] == [(lp.token, lp.logprob) for lp in streamed]


def test_background_runs_past_the_bound_are_503_until_one_ends():
    """A background run holds no connection: 1,200 creates from one client queued 1,069
    engine requests, and live responses (never evicted) pushed finished ones out of the
    store as they finished. Past the bound a create is refused before it is stored."""
    from pagedllm.engine.exceptions import EngineOverloadedError

    handler = scripted(ResponseStore(10), max_background=2)
    background = ResponsesRequest.model_validate({"input": "q", "background": True})

    async def go():
        first = [json.loads((await handler.create(background)).body)["id"] for _ in range(2)]
        with pytest.raises(EngineOverloadedError, match="--max-background-responses"):
            await handler.create(background)
        assert len(handler.store) == 2
        while any(handler.runs.is_running(response_id) for response_id in first):
            await asyncio.sleep(0.01)
        assert handler.store.get(first[0]).response["status"] == "completed"
        await handler.create(background)
        assert len(handler.store) == 3

    asyncio.run(go())
    limits = ServerLimits.from_args(make_parser().parse_args([]))
    assert limits.max_background_responses == 256
    with pytest.raises(ValueError, match="--max-background-responses must be at least 1"):
        ServerLimits.from_args(make_parser().parse_args(["--max-background-responses", "0"]))


def test_replay_arguments_are_checked():
    from pagedllm.entrypoints.openai.background_responses import BackgroundRun

    runs = BackgroundRuns(4)
    with pytest.raises(OpenAIError) as caught:  # no events kept for this id
        runs.replay("resp_x", None)
    assert caught.value.status == 400 and caught.value.param == "stream"
    runs._finished["resp_x"] = BackgroundRun(streamed=True)
    with pytest.raises(OpenAIError) as caught:
        runs.replay("resp_x", -2)
    assert caught.value.param == "starting_after"
    handler = scripted()
    stored = run(handler)["id"]
    with pytest.raises(ValueError, match="starting_after applies with stream=true"):
        handler.retrieve(stored, stream=False, starting_after=3)


def test_max_tool_calls_is_logged_as_inert(caplog):
    """OpenAI's max_tool_calls bounds built-in tools' calls; with function tools only it
    limits nothing here, and the log says so once."""
    from pagedllm.entrypoints.openai.unknown_fields import forget_unknown_fields

    forget_unknown_fields()
    with caplog.at_level(logging.WARNING):
        assert run(scripted(), max_tool_calls=0)["max_tool_calls"] == 0
    assert any("'max_tool_calls'" in r.getMessage() for r in caplog.records)
