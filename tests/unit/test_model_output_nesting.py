"""Tool calls the model wrote that nest past the bound are text, not a 500: the parsers
read model output with ``json_nesting.loads`` (plain ``json.loads`` raised RecursionError
at ~1,000 levels, and ``json.dumps`` of what it did parse recursed again)."""

from __future__ import annotations

from pagedllm.entrypoints.openai.serving_messages import _tool_use
from pagedllm.entrypoints.openai.tool_choice import _array_calls, _ArrayStream
from pagedllm.entrypoints.openai.tool_parsers.hermes import parse_call

DEEP = "[" * 5000 + "]" * 5000


def test_a_deep_hermes_block_is_no_call():
    assert parse_call('{"name": "f", "arguments": ' + DEEP + "}") is None
    assert parse_call('{"name": "f", "arguments": {"a": 1}}') is not None


def test_a_deep_array_of_calls_is_no_call():
    assert _array_calls(DEEP) is None
    assert _array_calls('[{"name": "f", "parameters": {"a": 1}}]') is not None


def test_deep_arguments_stay_text_in_a_messages_reply():
    call = {"id": "c1", "function": {"name": "f", "arguments": DEEP}}
    assert _tool_use(call).text == DEEP
    call["function"]["arguments"] = '{"a": 1}'
    assert _tool_use(call).input == {"a": 1}


def test_required_tool_calls_that_are_not_strictly_json_are_no_calls():
    """``tool_choice: "required"``'s grammar admits any JSON number: 1e999999 parsed to inf
    and came back as ``Infinity``, which a client's JSON.parse refuses."""
    for bad in ("NaN", "Infinity", "-1e999999"):
        assert _array_calls('[{"name": "f", "parameters": {"a": ' + bad + "}}]") is None
    stream = _ArrayStream()
    delta = stream.feed(
        '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {"a": 1e999999}}'
    )
    delta.calls += stream.feed(', {"name": "h", "parameters": {}}]').calls
    assert [c.name for c in delta.calls] == ["f"]  # nothing after the bad one
    assert not stream.finish().content
