"""Tool calls: the hermes parser (whole and streamed), tool_choice planning and its streams."""

from __future__ import annotations

import json
import random

import pytest

from pagedllm.entrypoints.openai.tool_choice import plan_tool_choice
from pagedllm.entrypoints.openai.tool_parsers import (
    HermesToolParser,
    get_tool_parser,
)
from tests.unit.tool_stream_helpers import random_pieces, streamed_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def call_block(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


# -- hermes ------------------------------------------------------------------------------


def test_hermes_extracts_calls_and_content() -> None:
    text = (
        "Let me check." + call_block("get_weather", {"city": "Paris"}) + call_block("get_time", {})
    )
    found = HermesToolParser.extract(text)
    assert found.content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in found.calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert found.calls[0].id != found.calls[1].id
    assert found.calls[0].id.startswith("chatcmpl-tool-")
    assert found.calls[0].as_json()["type"] == "function"


def test_hermes_plain_text_and_malformed_calls_stay_content() -> None:
    assert HermesToolParser.extract("no calls").content == "no calls"
    assert HermesToolParser.extract("no calls").calls == []
    bad = "x<tool_call>{not json}</tool_call>"
    found = HermesToolParser.extract(bad)
    assert (found.content, found.calls) == (bad, [])
    only_calls = HermesToolParser.extract(call_block("get_time", {}) + "\n")
    assert only_calls.content is None and len(only_calls.calls) == 1


def test_hermes_unclosed_call_at_the_end_still_parses() -> None:
    found = HermesToolParser.extract('<tool_call>{"name": "get_time", "arguments": {}}')
    assert [c.name for c in found.calls] == ["get_time"]


def test_hermes_arguments_given_as_text_are_kept() -> None:
    text = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert HermesToolParser.extract(text).calls[0].arguments == '{"a": 1}'


@pytest.mark.parametrize("seed", range(40))
def test_hermes_stream_equals_extract_for_any_split(seed: int) -> None:
    rng = random.Random(seed)
    parts = rng.sample(
        [
            "Sure. ",
            call_block("get_weather", {"city": "Rome", "days": 2}),
            "<tool_ca",
            " then ",
            call_block("get_time", {}),
            "< not a tag >",
        ],
        k=rng.randint(1, 5),
    )
    text = "".join(parts)
    expected = HermesToolParser.extract(text)
    content, calls = streamed_calls(HermesToolParser.stream(), random_pieces(text, rng, 12))
    if expected.calls or "<tool_call>" not in text:
        assert (content.strip() or None) == (expected.content.strip() if expected.content else None)
        assert [(c["name"], c["arguments"]) for c in calls] == [
            (c.name, c.arguments) for c in expected.calls
        ]


def test_hermes_stream_holds_back_a_partial_tag_only() -> None:
    stream = HermesToolParser.stream()
    assert stream.feed("Hello <tool").content == "Hello "
    assert stream.feed("box>").content == "<toolbox>"
    assert stream.finish().content == ""


# -- model output that is not strictly JSON (NaN, Infinity, numbers past a float) -----------

NOT_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999999", "-1e999999", "1" * 5000]


@pytest.mark.parametrize("number", NOT_JSON_NUMBERS)
def test_hermes_call_with_a_number_json_lacks_stays_content(number: str) -> None:
    """Python's json reads these (1e999999 as inf) and writes them back as NaN / Infinity:
    sent as arguments, a client's JSON.parse fails. The block is malformed, as {not json}."""
    text = 'Hi <tool_call>\n{"name": "f", "arguments": {"a": ' + number + "}}\n</tool_call>"
    found = HermesToolParser.extract(text)
    assert (found.content, found.calls) == (text, [])
    for pieces in ([text], list(text), [text[:20], text[20:]]):
        assert streamed_calls(HermesToolParser.stream(), pieces) == (text, [])
    unclosed = text.removesuffix("</tool_call>")
    assert HermesToolParser.extract(unclosed).calls == []
    assert streamed_calls(HermesToolParser.stream(), [unclosed]) == (unclosed, [])


@pytest.mark.parametrize("number", NOT_JSON_NUMBERS)
@pytest.mark.parametrize(
    "template",
    [
        '[TOOL_CALLS][{"name": "f", "arguments": {"a": %s}}]',  # list form, re-serialised
        '[TOOL_CALLS]f[ARGS]{"a": %s}',  # name form, arguments sent as generated
        'Hi [TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[ARGS]{"b": [%s]}',
    ],
)
def test_mistral_call_with_a_number_json_lacks_stays_content(template: str, number: str) -> None:
    text = template % number
    found = get_tool_parser("mistral").extract(text)
    assert (found.content, found.calls) == (text, [])
    if text.startswith("[TOOL_CALLS]"):  # nothing was sent as a call before the bad one
        for pieces in ([text], list(text)):
            assert streamed_calls(get_tool_parser("mistral").stream(), pieces) == (text, [])


@pytest.mark.parametrize("number", NOT_JSON_NUMBERS)
def test_llama3_json_call_with_a_number_json_lacks_stays_content(number: str) -> None:
    parser = get_tool_parser("llama3_json")
    text = '{"name": "f", "parameters": {"a": ' + number + "}}"
    found = parser.extract(text)
    assert (found.content, found.calls) == (text, [])
    assert streamed_calls(parser.stream(), [text[:5], text[5:]]) == (text, [])


@pytest.mark.parametrize("parser_name", ["hermes", "mistral", "llama3_json"])
def test_finite_numbers_still_make_calls_whose_arguments_are_json(parser_name: str) -> None:
    arguments = {"a": 1e308, "b": -2.5e-300, "c": 10**100, "d": 0.0}
    body = json.dumps({"name": "f", "arguments": arguments})
    text = {
        "hermes": "<tool_call>" + body + "</tool_call>",
        "mistral": "[TOOL_CALLS][" + body + "]",
        "llama3_json": body,
    }[parser_name]
    parser = get_tool_parser(parser_name)
    (call,) = parser.extract(text).calls
    assert json.loads(call.arguments, parse_constant=pytest.fail) == arguments
    _, streamed = streamed_calls(parser.stream(), list(text))
    assert [c["arguments"] for c in streamed] == [call.arguments]


def test_unknown_tool_parser_names_the_known_ones() -> None:
    assert get_tool_parser("hermes") is HermesToolParser
    with pytest.raises(ValueError, match="hermes"):
        get_tool_parser("no_such_parser")


# -- tool_choice -------------------------------------------------------------------------


def test_tool_choice_defaults_follow_openai() -> None:
    assert plan_tool_choice(None, None, None, None).mode == "none"
    assert plan_tool_choice([WEATHER], None, None, HermesToolParser).mode == "auto"
    with pytest.raises(ValueError, match="--enable-auto-tool-choice"):
        plan_tool_choice([WEATHER], None, None, None)
    assert plan_tool_choice([WEATHER], "none", None, None).calls_tools is False


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "not in tools"),
        ([WEATHER], {"type": "function"}, "named tool_choice"),
        (None, "required", "needs tools"),
        ([WEATHER], "sometimes", "tool_choice must be"),
        ([{"type": "retrieval"}], "required", "type"),
        ([{"type": "function", "function": {}}], "required", "name"),
    ],
)
def test_tool_choice_refuses_bad_requests(tools, choice, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_tool_choice(tools, choice, None, HermesToolParser)


def test_named_choice_constrains_to_the_parameters_and_streams_arguments() -> None:
    plan = plan_tool_choice(
        [WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}}, None, None
    )
    constraint = plan.structured_outputs()
    assert constraint is not None and constraint.json == WEATHER["function"]["parameters"]
    found = plan.extract('{"city": "Oslo"}')
    assert found.content is None
    assert [(c.name, c.arguments) for c in found.calls] == [("get_weather", '{"city": "Oslo"}')]
    stream = plan.stream()
    assert stream is not None
    content, calls = streamed_calls(stream, ['{"ci', 'ty": ', '"Oslo"}'])
    assert content == "" and [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", '{"city": "Oslo"}')
    ]
    # A function without parameters takes an empty object.
    no_params = plan_tool_choice([TIME], {"type": "function", "function": {"name": "get_time"}},
                                 None, None)  # fmt: skip
    assert no_params.structured_outputs().json == {"type": "object", "properties": {}}


def test_required_choice_is_an_array_of_calls() -> None:
    plan = plan_tool_choice([WEATHER, TIME], "required", None, None)
    schema = plan.structured_outputs().json
    assert schema["minItems"] == 1 and "maxItems" not in schema
    names = [item["properties"]["name"]["enum"] for item in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    text = '[{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "get_time", ' \
        '"parameters": {}}]'  # fmt: skip
    found = plan.extract(text)
    assert [(c.name, json.loads(c.arguments)) for c in found.calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {}),
    ]
    rng = random.Random(0)
    for _ in range(20):
        content, calls = streamed_calls(plan.stream(), random_pieces(text, rng, 12))
        assert content == ""
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            ("get_weather", {"city": "Oslo"}),
            ("get_time", {}),
        ]
    single = plan_tool_choice([WEATHER], "required", False, None)
    assert single.structured_outputs().json["maxItems"] == 1


def test_required_output_cut_short_is_content() -> None:
    plan = plan_tool_choice([WEATHER], "required", None, None)
    text = '[{"name": "get_weather", "parameters": {"ci'
    assert plan.extract(text).content == text and plan.extract(text).calls == []
    content, calls = streamed_calls(plan.stream(), [text])
    assert (content, calls) == (text, [])


def test_auto_without_parallel_calls_keeps_the_first() -> None:
    plan = plan_tool_choice([WEATHER, TIME], "auto", False, HermesToolParser)
    text = call_block("get_weather", {"city": "Rome"}) + call_block("get_time", {})
    assert [c.name for c in plan.extract(text).calls] == ["get_weather"]
    _, calls = streamed_calls(plan.stream(), [text[:30], text[30:]])
    assert [c["name"] for c in calls] == ["get_weather"]
