"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) through the official
anthropic client, on the session server (reasoning parser deepseek_r1, tool parser hermes):
replies, streams, stop reasons, a tool round trip, token counts that agree with /tokenize
and with usage, Anthropic-shaped errors, and the x-api-key header."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from tests.server.conftest import API_KEY, MODEL

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
ASK = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
FORCED = {"type": "tool", "name": "get_weather"}
# This client no longer takes sampling arguments by name (newer Claude models fix them);
# the server still reads them, as vLLM does.
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def greedy(client):
    """The greedy reply to HELLO, which several tests compare with."""
    return client.messages.create(model=MODEL, max_tokens=16, **GREEDY, messages=HELLO)


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def tokenized(server, messages: list[dict], **extra) -> int:
    """The prompt length /tokenize gives the same conversation in OpenAI's shape."""
    with server.client() as http:
        reply = http.post("/tokenize", json={"model": MODEL, "messages": messages, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()["count"]


def post(server, path: str, body: dict, **headers: str) -> httpx.Response:
    headers = headers or {"x-api-key": API_KEY}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=120)


def assert_anthropic_error(reply: httpx.Response, status: int, kind: str, *fragments: str):
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    for fragment in fragments:
        assert fragment in body["error"]["message"], body["error"]["message"]


def test_a_message(server, greedy):
    assert greedy.id.startswith("msg_") and greedy.type == "message"
    assert greedy.role == "assistant" and greedy.model == MODEL
    assert [block.type for block in greedy.content] == ["text"] and text_of(greedy)
    assert greedy.stop_reason in ("end_turn", "max_tokens") and greedy.stop_sequence is None
    assert greedy.usage.input_tokens > 0 and 0 < greedy.usage.output_tokens <= 16
    # the wire shape itself, without the client's leniency
    raw = post(server, "/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": HELLO})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert set(body) == {"id", "type", "role", "model", "content", "stop_reason",
                         "stop_sequence", "usage"}  # fmt: skip
    assert body["usage"] == {"input_tokens": greedy.usage.input_tokens, "output_tokens": 2}
    assert body["content"][0]["type"] == "text" and body["stop_reason"] == "max_tokens"


def test_system_prompt_and_count_tokens(server, client):
    system = "You answer in French."
    count = client.messages.count_tokens(model=MODEL, system=system, messages=HELLO)
    as_openai = [{"role": "system", "content": system}, *HELLO]
    assert count.input_tokens == tokenized(server, as_openai)
    blocks = [{"type": "text", "text": "You answer "}, {"type": "text", "text": "in French."}]
    again = client.messages.count_tokens(model=MODEL, system=blocks, messages=HELLO)
    assert again.input_tokens == count.input_tokens
    reply = client.messages.create(model=MODEL, max_tokens=2, system=system, messages=HELLO)
    assert reply.usage.input_tokens == count.input_tokens


def test_multi_turn(server, client):
    turns = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada!"}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    as_openai = [{"role": t["role"], "content": t["content"] if isinstance(t["content"], str)
                  else t["content"][0]["text"]} for t in turns]  # fmt: skip
    count = client.messages.count_tokens(model=MODEL, messages=turns)
    assert count.input_tokens == tokenized(server, as_openai)
    reply = client.messages.create(model=MODEL, max_tokens=4, messages=turns)
    assert reply.usage.input_tokens == count.input_tokens and text_of(reply)


def test_a_final_assistant_message_is_continued(client, openai_client):
    """Anthropic's prefill: the reply continues the last assistant message, as the chat
    path's continue_final_message does."""
    turns = [{"role": "user", "content": "Count from one to ten."},
             {"role": "assistant", "content": "One, two,"}]  # fmt: skip
    reply = client.messages.create(model=MODEL, max_tokens=6, messages=turns, **GREEDY)
    chat = openai_client.chat.completions.create(
        model=MODEL, messages=turns, max_tokens=6, temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )  # fmt: skip
    assert text_of(reply) == chat.choices[0].message.content


def test_reasoning_comes_back_as_thinking(server, client):
    """A prefill that opens <think> leaves the reply inside the reasoning block: the
    deepseek_r1 parser makes it a thinking block, whole and streamed. The thinking field
    is accepted (as vLLM) and its budget noted as not enforced."""
    kwargs = dict(
        model=MODEL, max_tokens=6, **GREEDY,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[*HELLO, {"role": "assistant", "content": "<think>"}],
    )  # fmt: skip
    whole = client.messages.create(**kwargs)
    assert [block.type for block in whole.content] == ["thinking"]
    assert whole.content[0].thinking and whole.content[0].signature
    with client.messages.stream(**kwargs) as stream:
        kinds = {event.type for event in stream}
        streamed = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds
    assert streamed.content[0].thinking == whole.content[0].thinking
    assert "'thinking' of MessagesRequest has no effect" in server.logs()


def test_streaming_matches_the_whole_reply(client, greedy):
    with client.messages.stream(model=MODEL, max_tokens=16, **GREEDY, messages=HELLO) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "text", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.id.startswith("msg_") and final.id != greedy.id
    assert text_of(final) == text_of(greedy)
    assert (final.stop_reason, final.usage) == (greedy.stop_reason, greedy.usage)


def test_stream_events_on_the_wire(server):
    """Each event is ``event: NAME`` + ``data: JSON`` named by its type, in Anthropic's
    order; max_tokens ends it with stop_reason max_tokens."""
    body = {"model": MODEL, "max_tokens": 3, "stream": True, "messages": HELLO,
            "temperature": 0}  # fmt: skip
    headers = {"x-api-key": API_KEY}
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, headers=headers) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = reply.read().decode()
    events = [part.split("\n") for part in text.strip().split("\n\n")]
    assert all(len(e) == 2 and e[0].startswith("event: ") and e[1].startswith("data: ")
               for e in events)  # fmt: skip
    names = [e[0][len("event: ") :] for e in events]
    data = [json.loads(e[1][len("data: ") :]) for e in events]
    assert [d["type"] for d in data] == names
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert data[0]["message"]["usage"]["input_tokens"] > 0
    assert data[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert data[-2]["usage"]["output_tokens"] == 3


def test_stop_sequences(client, greedy):
    text = text_of(greedy)
    word = text.split()[1]  # a word the greedy reply reaches
    kwargs = dict(model=MODEL, max_tokens=16, **GREEDY, messages=HELLO,
                  stop_sequences=["NEVER-SEEN", word])  # fmt: skip
    reply = client.messages.create(**kwargs)
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", word)
    assert text_of(reply) == text[: text.index(word)]
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", word)


def test_max_tokens(client):
    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    reply = client.messages.create(model=MODEL, max_tokens=3, messages=story)
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 3


def test_a_tool_round_trip(server, client):
    kwargs = dict(model=MODEL, max_tokens=40, **GREEDY, tools=[WEATHER],
                  tool_choice=FORCED, messages=[ASK])  # fmt: skip
    first = client.messages.create(**kwargs)
    assert first.stop_reason == "tool_use"
    assert [block.type for block in first.content] == ["tool_use"]
    call = first.content[0]
    assert call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER["input_schema"])
    with client.messages.stream(**kwargs) as stream:
        kinds = {event.type for event in stream}
        streamed = stream.get_final_message()
    assert "input_json" in kinds and streamed.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in streamed.content] == [
        ("tool_use", "get_weather", call.input)
    ]

    result = "21 degrees and sunny"
    turns = [
        ASK,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": result}]},
    ]  # fmt: skip
    as_openai = [
        ASK,
        {"role": "assistant", "tool_calls": [{"id": call.id, "type": "function", "function": {
            "name": call.name, "arguments": json.dumps(call.input)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]  # fmt: skip
    tools = [{"type": "function", "function": {"name": WEATHER["name"], "parameters":
              WEATHER["input_schema"], "description": WEATHER["description"]}}]  # fmt: skip
    count = client.messages.count_tokens(model=MODEL, messages=turns, tools=[WEATHER])
    assert count.input_tokens == tokenized(server, as_openai, tools=tools)
    reply = client.messages.create(
        model=MODEL, max_tokens=6, **GREEDY, tools=[WEATHER], tool_choice={"type": "none"},
        messages=turns,
    )  # fmt: skip
    assert [block.type for block in reply.content] == ["text"]
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.input_tokens == count.input_tokens


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": HELLO}, "max_tokens"),
        ({"max_tokens": 4, "messages": [{"role": "robot", "content": "Hi"}]}, "role"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "data": "x"}}]}]}, "document"),
        ({"max_tokens": 4, "messages": [{"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t"}]}]}, "tool_result"),
        ({"max_tokens": 4, "messages": HELLO, "tools": [
            {"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
        ({"max_tokens": 4, "messages": HELLO, "mcp_servers": [{"url": "x"}]}, "mcp_servers"),
        ({"max_tokens": 4, "messages": HELLO, "tool_choice": {"type": "any"}}, "needs tools"),
        ({"max_tokens": 0, "messages": HELLO}, "max_tokens"),
        ({"max_tokens": 4, "messages": HELLO,
          "thinking": {"type": "enabled", "budget_tokens": -5}}, "budget_tokens"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": []}]},
         "messages.0.content is empty"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "text", "text": ""}]}]}, "messages.0.content is empty"),
        ({"max_tokens": 4, "messages": [*HELLO, {"role": "assistant", "content": []},
                                        *HELLO]}, "messages.1.content is empty"),
    ],
)  # fmt: skip
def test_bad_requests_are_anthropic_400s(server, body, fragment):
    reply = post(server, "/v1/messages", {"model": MODEL, **body})
    assert_anthropic_error(reply, 400, "invalid_request_error", fragment)


def test_other_errors_are_anthropic_shaped(server, client):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}])  # fmt: skip
    assert refused.value.status_code == 400
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "image" in refused.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-opus-4", max_tokens=4, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"
    bad_count = post(server, "/v1/messages/count_tokens",
                     {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]})  # fmt: skip
    assert_anthropic_error(bad_count, 400, "invalid_request_error", "role")
    wrong_method = httpx.get(f"{server.url}/v1/messages", headers={"x-api-key": API_KEY})
    assert_anthropic_error(wrong_method, 405, "invalid_request_error")
    # the OpenAI routes keep OpenAI's shape
    chat = post(server, "/v1/chat/completions", {"model": MODEL})
    assert chat.status_code == 400 and set(chat.json()) == {"error"}


def test_unknown_fields_are_ignored_and_logged_once(server):
    body = {"model": MODEL, "max_tokens": 1, "messages": HELLO, "metadata": {"user_id": "u-7"},
            "speculative_field": {"x": 1}}  # fmt: skip
    for _ in range(2):
        assert post(server, "/v1/messages", body).status_code == 200
    logs = server.logs()
    assert logs.count("'speculative_field' of MessagesRequest is not known") == 1
    assert "u-7" not in logs


def test_x_api_key_and_bearer_both_authenticate(server):
    with pytest.raises(anthropic.AuthenticationError) as denied:
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=1, messages=HELLO
        )
    assert denied.value.body["error"]["type"] == "authentication_error"
    no_key = httpx.post(f"{server.url}/v1/messages/count_tokens",
                        json={"model": MODEL, "messages": HELLO})  # fmt: skip
    assert_anthropic_error(no_key, 401, "authentication_error", "x-api-key")
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=API_KEY, max_retries=0)
    assert bearer.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens > 0
    # x-api-key is a key for every route; the OpenAI routes answer in OpenAI's shape
    assert httpx.get(f"{server.url}/v1/models", headers={"x-api-key": API_KEY}).is_success
    wrong = httpx.get(f"{server.url}/v1/models", headers={"x-api-key": "wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 401
