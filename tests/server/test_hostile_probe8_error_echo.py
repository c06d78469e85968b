"""Hostile-input probe 8, error echoes: a 400 or 404 quotes the value it refuses, and the
value is the client's. A model name, a content part or item type, an include, a tool type, a
tool_choice, a response_format type, a guided_decoding_backend, a structured_outputs key or a
grammar rule of 1 MB came back whole (a 1 MB reply per 1 MB request, 2 MB where a mapping's
key was also the error's ``param``). Messages are now cut to 1,024 characters, keeping the
head (which names the field) and the tail (which says what to send); ``param`` to 256."""

from __future__ import annotations

import time

import pytest

from pagedllm.entrypoints.openai.errors import (
    MAX_ERROR_CHARS,
    MAX_ERROR_PARAM_CHARS,
    bounded_message,
    error_body,
)
from tests.server.conftest import MODEL
from tests.server.test_errors import post

BIG = "x" * 1_000_000
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "max_tokens": 3, "messages": HI}
RESPONSES = {"model": MODEL, "max_output_tokens": 3}

# (path, body, status, the message's head, its tail)
CASES = {
    "chat model": ("/v1/chat/completions", {**CHAT, "model": BIG}, 404, "The model `xxx", ""),
    "chat role": (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": BIG, "content": "hi"}]},
        400, "messages[0] has unknown role 'xxx", "",
    ),
    "chat part type": (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": [{"type": BIG}]}]},
        400, "messages[0] has a content part of type 'xxx", "",
    ),
    "response_format type": (
        "/v1/chat/completions", {**CHAT, "response_format": {"type": BIG}},
        400, "response_format type 'xxx", "json_schema or structural_tag.",
    ),
    "guided_decoding_backend": (
        "/v1/chat/completions", {**CHAT, "guided_decoding_backend": BIG},
        400, "guided_decoding_backend 'xxx", "pagedllm uses xgrammar.",
    ),
    "structured_outputs key": (
        "/v1/chat/completions", {**CHAT, "structured_outputs": {BIG: 1}},
        400, "Invalid structured_outputs", "",
    ),
    "tool_choice": ("/v1/chat/completions", {**CHAT, "tool_choice": BIG}, 400, "tool_choice", ""),
    "grammar rule": (
        "/v1/chat/completions", {**CHAT, "guided_grammar": "root ::= " + BIG[:200_000]},
        400, "Invalid structured outputs grammar", "",
    ),
    "logit_bias key": (
        "/v1/chat/completions", {**CHAT, "logit_bias": {BIG: "a"}}, 400, "logit_bias.xxx", "",
    ),
    "responses item type": (
        "/v1/responses", {**RESPONSES, "input": [{"type": BIG}]},
        400, "input[0]: items of type 'xxx", "or reasoning items.",
    ),
    "responses part type": (
        "/v1/responses",
        {**RESPONSES, "input": [{"role": "user", "content": [{"type": BIG, "text": "a"}]}]},
        400, "input[0]: content parts of type 'xxx", "",
    ),
    "responses include": (
        "/v1/responses", {**RESPONSES, "input": "hi", "include": [BIG]}, 400, "include 'xxx", "",
    ),
    "responses tool type": (
        "/v1/responses", {**RESPONSES, "input": "hi", "tools": [{"type": BIG}]},
        400, "tools[0]: the built-in tool type 'xxx", "only function tools are served.",
    ),
    "previous_response_id": (
        "/v1/responses", {**RESPONSES, "input": "hi", "previous_response_id": BIG},
        404, "Response with id 'xxx", "",
    ),
    "completion token id": (
        "/v1/completions", {"model": MODEL, "prompt": [1, int("9" * 4000)], "max_tokens": 1},
        400, "prompt must hold token ids in [0, 49152): token id 999", "is out of vocabulary.",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_refused_values_are_not_echoed_whole(server, case):
    path, body, status, head, tail = CASES[case]
    reply = post(server, path, json=body)
    assert reply.status_code == status, reply.text[:300]
    assert len(reply.content) < 2 * MAX_ERROR_CHARS, len(reply.content)
    error = reply.json()["error"]
    assert error["message"].startswith(head), error["message"][:200]
    assert error["message"].endswith(tail), error["message"][-200:]
    assert "characters cut" in error["message"]
    assert error["param"] is None or len(error["param"]) <= MAX_ERROR_PARAM_CHARS + 3


def test_anthropic_errors_are_bounded_too(server):
    body = {"model": BIG, "max_tokens": 3, "messages": HI}
    reply = post(server, "/v1/messages", json=body)
    assert reply.status_code == 404, reply.text[:300]
    assert len(reply.content) < 2 * MAX_ERROR_CHARS
    assert reply.json()["error"]["message"].startswith("The model `xxx")


def test_other_requests_are_served_meanwhile(server):
    with server.client() as http:
        start = time.monotonic()
        assert http.get("/health").status_code == 200
        assert time.monotonic() - start < 2
        reply = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1})
        assert reply.status_code == 200, reply.text


def test_short_messages_are_left_whole():
    message = "top_p must be in (0, 1], got 2."
    assert bounded_message(message) == message
    assert error_body(message, 400, "top_p")["error"] == {
        "message": message, "type": "BadRequestError", "param": "top_p", "code": 400,
    }  # fmt: skip


def test_a_long_message_keeps_its_head_and_tail():
    message = "field x: " + "y" * 5000 + " use z."
    cut = bounded_message(message)
    assert len(cut) <= MAX_ERROR_CHARS + 40
    assert cut.startswith("field x: yyy") and cut.endswith("yyy use z.")
    assert f"...({len(message) - MAX_ERROR_CHARS} characters cut)..." in cut
