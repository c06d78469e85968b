"""Mistral tool-call parser: both output forms, malformed calls, and streaming == extraction."""

from __future__ import annotations

import json
import random

import pytest

from pagedllm.entrypoints.openai.tool_parsers import (
    TOOL_PARSER_NAMES,
    MistralToolParser,
    ToolDelta,
    get_tool_parser,
)
from tests.unit.tool_stream_helpers import random_pieces, streamed_calls

Parser = MistralToolParser
NESTED = {"city": "São Paulo", "filters": {"days": [1, 2], "units": None}, "note": "a}b]c"}


def list_form(*calls: tuple[str, dict]) -> str:
    """How models on tokenizers before v11 (e.g. Mistral-7B-Instruct-v0.3) write calls."""
    items = [{"name": name, "arguments": arguments} for name, arguments in calls]
    return "[TOOL_CALLS]" + json.dumps(items, ensure_ascii=False)


def name_form(name: str, arguments: dict, call_id: str | None = None) -> str:
    """How models on v11+ tokenizers (e.g. Mistral-Small-3.2) write one call."""
    id_part = f"[CALL_ID]{call_id}" if call_id is not None else ""
    return f"[TOOL_CALLS]{name}{id_part}[ARGS]{json.dumps(arguments, ensure_ascii=False)}"


def is_mistral_id(call_id: str | None) -> bool:
    return call_id is not None and len(call_id) == 9 and call_id.isascii() and call_id.isalnum()


# -- extraction ----------------------------------------------------------------------------


def test_list_form_calls_and_the_content_before_them() -> None:
    text = "Let me check. " + list_form(("get_weather", NESTED), ("get_time", {}))
    found = Parser.extract(text)
    assert found.content == "Let me check. "
    assert [(c.name, json.loads(c.arguments)) for c in found.calls] == [
        ("get_weather", NESTED),
        ("get_time", {}),
    ]
    # Unicode is kept as written, not \u-escaped.
    assert "São Paulo" in found.calls[0].arguments
    assert all(is_mistral_id(c.id) for c in found.calls)
    assert found.calls[0].id != found.calls[1].id


def test_list_form_item_without_arguments_and_with_its_own_id() -> None:
    text = '[TOOL_CALLS] [{"name": "get_time"}, {"name": "f", "arguments": {}, "id": "abc123XYZ"}]'
    found = Parser.extract(text)
    assert [(c.name, c.arguments) for c in found.calls] == [("get_time", "{}"), ("f", "{}")]
    assert found.calls[1].id == "abc123XYZ"
    assert found.content is None


def test_name_form_calls_keep_their_arguments_as_generated() -> None:
    text = 'Sure.\n[TOOL_CALLS]get_weather[ARGS]{"city":  "Paris"}' + name_form("get_time", {})
    found = Parser.extract(text)
    assert found.content == "Sure.\n"
    assert [(c.name, c.arguments) for c in found.calls] == [
        ("get_weather", '{"city":  "Paris"}'),
        ("get_time", "{}"),
    ]
    assert all(is_mistral_id(c.id) for c in found.calls)


def test_name_form_with_nested_unicode_arguments() -> None:
    found = Parser.extract(name_form("search", NESTED))
    assert [(c.name, json.loads(c.arguments)) for c in found.calls] == [("search", NESTED)]


def test_call_id_is_split_from_the_name_and_kept_when_well_shaped() -> None:
    found = Parser.extract(name_form("f", {"a": 1}, "a1B2c3D4e") + name_form("g", {}, "bad id"))
    assert [c.name for c in found.calls] == ["f", "g"]
    assert found.calls[0].id == "a1B2c3D4e"
    assert is_mistral_id(found.calls[1].id) and found.calls[1].id != "bad id"


def test_name_form_without_the_args_marker() -> None:
    # The detokenizer may drop [ARGS]; the name still ends at the first brace.
    found = Parser.extract('[TOOL_CALLS]get_weather{"city": "Oslo"}')
    assert [(c.name, c.arguments) for c in found.calls] == [("get_weather", '{"city": "Oslo"}')]


def test_text_after_a_calls_json_is_dropped() -> None:
    found = Parser.extract(list_form(("f", {})) + "</s>")
    assert (found.content, [c.name for c in found.calls]) == (None, ["f"])
    found = Parser.extract(name_form("f", {}) + " trailing" + name_form("g", {}))
    assert (found.content, [c.name for c in found.calls]) == (None, ["f", "g"])


def test_without_the_marker_everything_is_content() -> None:
    for text in ["Hello!", "", '[{"name": "f", "arguments": {}}]', "f[ARGS]{}"]:
        found = Parser.extract(text)
        assert (found.content, found.calls) == (text, [])


MALFORMED = [
    '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}',  # cut before the list closed
    '[TOOL_CALLS][{"name": "f", "arguments": {a: 1}}]',  # not JSON
    "[TOOL_CALLS][]",  # no call
    '[TOOL_CALLS][{"arguments": {}}]',  # no name
    '[TOOL_CALLS]["f"]',  # an item that is not a call
    'Text [TOOL_CALLS]f[ARGS]{"a": 1',  # cut inside the arguments
    '[TOOL_CALLS]f[ARGS]{"a": 1,}',  # not JSON
    "[TOOL_CALLS]f[ARGS]",  # no arguments
    "[TOOL_CALLS]",  # nothing after the marker
    '[TOOL_CALLS][ARGS]{"a": 1}',  # no name
    "[TOOL_CALLS]my tool[ARGS]{}",  # a name with a blank
    '[TOOL_CALLS]["f"] then more text',  # bad, and text after it
    'Hi [TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[ARGS]{oops}',  # the second call is bad
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_calls_leave_the_whole_text_as_content(text: str) -> None:
    found = Parser.extract(text)
    assert (found.content, found.calls) == (text, [])


# -- streaming -----------------------------------------------------------------------------

WELL_FORMED = [
    "Let me check. " + list_form(("get_weather", NESTED), ("get_time", {})),
    list_form(("get_time", {})),
    "[TOOLS] and [TOOL_CALL aside, " + name_form("get_weather", NESTED) + name_form("g", {}),
    name_form("f", {"a": [1, {"b": "]}"}]}, "a1B2c3D4e") + name_form("g", {"x": "ü"}, "Z9y8X7w6V"),
    '[TOOL_CALLS]get_weather{"city": "Oslo"}',
    name_form("f", {}) + " trailing [TOOL_C" + name_form("g", {}),
    list_form(("f", {"q": "日本"})) + "</s>",
    "No tools needed: [TOOL_CALL is not the marker.",
]


def expected_calls(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    found = Parser.extract(text)
    return found.content, [(c.name, c.arguments) for c in found.calls]


def check_stream(text: str, pieces: list[str]) -> None:
    assert "".join(pieces) == text
    content, calls = expected_calls(text)
    streamed_content, streamed = streamed_calls(Parser.stream(), pieces)
    assert (streamed_content if streamed_content.strip() else None) == content, pieces
    assert [(c["name"], c["arguments"]) for c in streamed] == calls, pieces
    assert all(is_mistral_id(c["id"]) for c in streamed)


@pytest.mark.parametrize("text", WELL_FORMED)
def test_stream_equals_extract_character_by_character(text: str) -> None:
    assert Parser.extract(text).calls or "[TOOL_CALLS]" not in text, "the case is well formed"
    check_stream(text, list(text))


@pytest.mark.parametrize("text", WELL_FORMED)
def test_stream_equals_extract_for_random_chunkings(text: str) -> None:
    rng = random.Random(text)
    for _ in range(60):
        check_stream(text, random_pieces(text, rng))


@pytest.mark.parametrize("text", [t for t in MALFORMED if t.count("[TOOL_CALLS]") == 1])
def test_stream_passes_a_malformed_call_on_as_content(text: str) -> None:
    rng = random.Random(text)
    for pieces in [list(text), *(random_pieces(text, rng) for _ in range(30))]:
        assert streamed_calls(Parser.stream(), pieces) == (text, []), pieces


def test_stream_cannot_take_back_a_call_sent_before_a_malformed_one() -> None:
    # As with hermes: the first call went out before the second proved bad.
    text = 'Hi [TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[ARGS]{oops}'
    content, calls = streamed_calls(Parser.stream(), list(text))
    assert content == "Hi [TOOL_CALLS]g[ARGS]{oops}"
    assert [(c["name"], c["arguments"]) for c in calls] == [("f", '{"a": 1}')]


def test_stream_keeps_model_call_ids() -> None:
    text = name_form("f", {}, "a1B2c3D4e")
    _, calls = streamed_calls(Parser.stream(), list(text))
    assert calls[0]["id"] == "a1B2c3D4e"


def test_stream_sends_a_call_as_soon_as_its_json_closes() -> None:
    stream = Parser.stream()
    assert stream.feed("Hi ").content == "Hi "
    assert stream.feed('[TOOL_CALLS]f[ARGS]{"a": ').calls == []
    sent = stream.feed("1}")
    assert [(d.index, d.name, d.arguments) for d in sent.calls] == [(0, "f", '{"a": 1}')]
    sent = stream.feed('[TOOL_CALLS][{"name": "g", "arguments": {}}]')
    assert [(d.index, d.name) for d in sent.calls] == [(1, "g")]
    assert stream.finish() == ToolDelta()


def test_stream_holds_back_a_partial_marker_only() -> None:
    stream = Parser.stream()
    assert stream.feed("Hello [TOOL").content == "Hello "
    assert stream.feed("S] x").content == "[TOOLS] x"
    assert stream.feed("[TOOL_CA").content == ""
    assert stream.finish().content == "[TOOL_CA"


def test_registered_as_mistral() -> None:
    assert "mistral" in TOOL_PARSER_NAMES
    assert get_tool_parser("mistral") is MistralToolParser
