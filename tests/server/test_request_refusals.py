"""Reproducers of a robustness probe, on the tiny model's server: a chat-style tool message in
a Responses input, duplicate tool names (chat, Responses, Anthropic), and bodies sent with a
media type other than JSON. Each is a 4xx that names what was wrong, and the server serves
on after it."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import API_KEY
from tests.server.test_errors import assert_error
from tests.server.test_messages import assert_anthropic_error

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
RESULT = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}


def post(server, path: str, **kwargs) -> httpx.Response:
    headers = {**HEADERS, **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


@pytest.fixture(autouse=True)
def serving_afterwards(tiny_server):
    """After every reproducer: the server still answers a bystander."""
    yield
    reply = post(tiny_server, "/v1/completions", json={"prompt": "1 2 3", "max_tokens": 2})
    assert reply.status_code == 200, reply.text


# -- a chat-style tool message in /v1/responses ----------------------------------------------


def responses(input_items: list[dict], **fields) -> dict:
    return {"input": input_items, "max_output_tokens": 2, **fields}


@pytest.mark.parametrize(
    "tool_message",
    [
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"type": "message", "role": "tool", "content": "sunny"},
    ],
)
def test_a_tool_role_message_names_its_item_and_function_call_output(tiny_server, tool_message):
    body = responses([*HELLO, CALL, RESULT, tool_message])
    reply = post(tiny_server, "/v1/responses", json=body)
    assert_error(
        reply, 400, "input.3.role", "function_call_output", "call_id", param="input.3.role"
    )


@pytest.mark.parametrize("role", ["function", "wizard", ""])
def test_other_unknown_roles_name_the_roles_accepted(tiny_server, role):
    reply = post(tiny_server, "/v1/responses", json=responses([{"role": role, "content": "hi"}]))
    assert_error(reply, 400, "input.0.role", repr(role), "user, assistant, system, developer",
                 param="input.0.role")  # fmt: skip


def test_every_accepted_role_is_served(tiny_server):
    items = [{"role": r, "content": "hi"} for r in ("developer", "system", "user", "assistant")]
    reply = post(tiny_server, "/v1/responses", json=responses([*items, *HELLO]))
    assert reply.status_code == 200, reply.text


# -- duplicate tool names ----------------------------------------------------------------------


def chat_tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def test_duplicate_chat_function_names_are_400(tiny_server):
    tools = [chat_tool("get_weather"), chat_tool("get_time"), chat_tool("get_weather")]
    for choice in ("required", "none"):
        body = {"messages": HELLO, "max_tokens": 2, "tools": tools, "tool_choice": choice}
        reply = post(tiny_server, "/v1/chat/completions", json=body)
        assert_error(reply, 400, "tools.2.function.name", "'get_weather'", "tools.0",
                     param="tools.2.function.name")  # fmt: skip


def test_a_duplicate_name_is_echoed_in_part(tiny_server):
    name = "f" * 100_000
    body = {"messages": HELLO, "max_tokens": 2, "tools": [chat_tool(name), chat_tool(name)]}
    reply = post(tiny_server, "/v1/chat/completions", json=body)
    assert_error(reply, 400, "tools.1.function.name", "'" + "f" * 64 + "'")
    assert len(reply.content) < 1_000


def test_duplicate_responses_function_names_are_400(tiny_server):
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    body = responses(HELLO, tools=[tool, tool], tool_choice="required")
    reply = post(tiny_server, "/v1/responses", json=body)
    assert_error(reply, 400, "tools.1.name", "'get_weather'", param="tools.1.name")


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_duplicate_anthropic_tool_names_are_400(tiny_server, path):
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    other = {"name": "get_time", "input_schema": {"type": "object"}}
    body = {"model": "", "max_tokens": 2, "messages": HELLO, "tools": [tool, other, tool],
            "tool_choice": {"type": "any"}}  # fmt: skip
    reply = post(tiny_server, path, json=body)
    assert_anthropic_error(reply, 400, "invalid_request_error", "tools.2.name", "'get_weather'")


def test_distinct_tool_names_are_served(tiny_server):
    tools = [chat_tool("get_weather"), chat_tool("get_time")]
    body = {"messages": HELLO, "max_tokens": 2, "tools": tools, "tool_choice": "required"}
    reply = post(tiny_server, "/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text


# -- Content-Type -------------------------------------------------------------------------------


JSON_BODIES = {
    "/v1/completions": {"prompt": "hi", "max_tokens": 1},
    "/v1/chat/completions": {"messages": HELLO, "max_tokens": 1},
    "/v1/responses": {"input": "hi", "max_output_tokens": 1},
    "/v1/messages": {"model": "", "max_tokens": 1, "messages": HELLO},
    "/v1/messages/count_tokens": {"model": "", "messages": HELLO},
    "/tokenize": {"prompt": "hi"},
    "/detokenize": {"tokens": [40]},
    "/generate": {"prompt": "hi", "max_tokens": 1},
}


def raw(path: str) -> bytes:
    return httpx.Request("POST", "http://x", json=JSON_BODIES[path]).content


@pytest.mark.parametrize("path", list(JSON_BODIES))
@pytest.mark.parametrize(
    "media_type", ["text/plain", "application/x-www-form-urlencoded", "text/plain; charset=utf-8"]
)
def test_a_body_that_is_not_json_by_its_type_is_415(tiny_server, path, media_type):
    reply = post(tiny_server, path, content=raw(path), headers={"Content-Type": media_type})
    assert reply.status_code == 415, reply.text
    body = reply.json()
    message = body["error"]["message"]
    assert media_type.split(";")[0] in message and "application/json" in message, message
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"]["code"] == 415


@pytest.mark.parametrize("path", list(JSON_BODIES))
@pytest.mark.parametrize(
    "media_type", [None, "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_bodies_with_or_without_a_type_are_served(tiny_server, path, media_type):
    """Some clients send no Content-Type (read as JSON); the SDKs send application/json."""
    headers = {} if media_type is None else {"Content-Type": media_type}
    reply = post(tiny_server, path, content=raw(path), headers=headers)
    assert reply.status_code == 200, reply.text


def test_a_page_must_type_its_body(tiny_server):
    """A browser sends a Blob body without a type and without a CORS preflight: from a page
    (Origin sent), no type is refused, so no site can run requests on a keyless server."""
    path = "/v1/completions"
    page = {"Origin": "https://evil.example.com"}
    reply = post(tiny_server, path, content=raw(path), headers=page)
    assert_error(reply, 415, "no Content-Type", "Origin", "application/json")
    typed = post(tiny_server, path, json=JSON_BODIES[path], headers=page)
    assert typed.status_code == 200, typed.text


def test_requests_without_a_body_keep_their_type_unread(tiny_server):
    """curl -X POST -d '' sends a form type and no body: nothing to misread."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert post(tiny_server, "/ping", headers=form).status_code == 200
    models = httpx.get(
        f"{tiny_server.url}/v1/models", headers={**HEADERS, "Content-Type": "text/plain"}
    )
    assert models.status_code == 200, models.text
