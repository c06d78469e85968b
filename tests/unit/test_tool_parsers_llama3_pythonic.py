"""The llama3_json and pythonic tool-call parsers: whole outputs and streams (pure Python)."""

from __future__ import annotations

import json
import random

import pytest

from pagedllm.entrypoints.openai.tool_parsers import (
    TOOL_PARSER_NAMES,
    Llama3JsonToolParser,
    PythonicToolParser,
    ToolDelta,
    ToolParser,
    ToolStream,
    get_tool_parser,
)
from tests.unit.tool_stream_helpers import random_pieces, streamed_calls

Llama = Llama3JsonToolParser
Pythonic = PythonicToolParser


def calls_of(parser: type[ToolParser], text: str) -> list[tuple[str, object]]:
    """(name, decoded arguments) of each call extracted; asserts the content is None."""
    found = parser.extract(text)
    assert found.content is None, found.content
    return [(c.name, json.loads(c.arguments)) for c in found.calls]


def assert_content(parser: type[ToolParser], text: str) -> None:
    found = parser.extract(text)
    assert found.calls == [] and found.content == text


def run_stream(stream: ToolStream, pieces: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """Concatenated content and (name, arguments) per call index of a streamed text."""
    content, calls = streamed_calls(stream, pieces)
    assert all(c["id"] and c["id"].startswith("chatcmpl-tool-") for c in calls)
    return content, [(c["name"], c["arguments"]) for c in calls]


def extracted(parser: type[ToolParser], text: str) -> tuple[str, list[tuple[str, str]]]:
    found = parser.extract(text)
    return found.content or "", [(c.name, c.arguments) for c in found.calls]


def every_split(text: str, seed: int) -> list[list[str]]:
    """Whole, char by char, each cut in two, and random chunks."""
    rng = random.Random(seed)
    splits = [[text], list(text), ["", *(c for ch in text for c in (ch, ""))]]
    splits += [[text[:i], text[i:]] for i in range(len(text) + 1)]
    return splits + [random_pieces(text, rng, 14, empty=True) for _ in range(40)]


# -- llama3_json: whole outputs -------------------------------------------------------------

WEATHER_JSON = (
    '{"name": "get_weather", "parameters": {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}}'
)
LLAMA_CALLS = [
    WEATHER_JSON,
    "<|python_tag|>" + WEATHER_JSON,
    "\n\n  " + WEATHER_JSON + "\n",
    '{"type": "function", "name": "get_time", "parameters": {}}',
    '{"name": "get_time", "arguments": {"tz": "UTC"}}',
    WEATHER_JSON + '; {"name": "get_time", "parameters": {"tz": "America/Chicago"}}',
    "<|python_tag|>" + WEATHER_JSON + ';<|python_tag|>{"name": "t", "parameters": {}};',
    WEATHER_JSON + '\n{"name": "t", "parameters": {}}',
    '{"name": "run", "parameters": {"code": "if (a) { b(); }; x = \\"}\\"", '
    '"args": [[1, 2], {"k": [null, true, 1.5e3]}], "note": "a, b; [c] {d} \'e\'"}}',
    '{"name": "translate", "parameters": {"text": "東京は晴れ 🌞", "to": "français"}}',
]
LLAMA_CONTENT = [
    "",
    "   ",
    "The weather in Dallas is sunny.",
    'Sure! {"name": "get_weather", "parameters": {"city": "Dallas"}}',
    "<|python_tag|>",
    '<|python_tag|>brave_search.call(query="Dallas weather")',
    "<|pyth",
    '{"name": "get_weather", "parameters": {"city": "Dal',  # cut short
    '{"parameters": {"city": "Dallas"}}',  # no name
    '{"name": "get_weather"}',  # no arguments
    '{"name": 7, "parameters": {}}',
    '[{"name": "get_weather", "parameters": {}}]',  # an array, not an object
    WEATHER_JSON + " I hope that helps!",  # text after the call
    WEATHER_JSON + '; {"name": "get_time", "parameters": {"tz": ',  # the second is malformed
    WEATHER_JSON + '; {"arguments": {}}',  # the second is no call
    '{"name": "f", "parameters": {"x": NaN}}',
    '{"name": "f", "parameters": {"x": 1e999}}',
    "{not json at all}",
]


def test_llama3_json_single_call() -> None:
    assert calls_of(Llama, WEATHER_JSON) == [
        ("get_weather", {"city": "Dallas", "state": "TX", "unit": "fahrenheit"})
    ]
    call = Llama.extract(WEATHER_JSON).calls[0]
    assert call.id.startswith("chatcmpl-tool-")
    assert call.as_json()["function"]["name"] == "get_weather"


def test_llama3_json_python_tag_and_leading_whitespace() -> None:
    expected = [("get_weather", {"city": "Dallas", "state": "TX", "unit": "fahrenheit"})]
    assert calls_of(Llama, "<|python_tag|>" + WEATHER_JSON) == expected
    assert calls_of(Llama, "\n  <|python_tag|> " + WEATHER_JSON + "\n") == expected


def test_llama3_json_several_calls_separated_by_semicolons() -> None:
    text = WEATHER_JSON + '; {"name": "get_time", "parameters": {"tz": "America/Chicago"}}'
    found = Llama.extract(text)
    assert [c.name for c in found.calls] == ["get_weather", "get_time"]
    assert json.loads(found.calls[1].arguments) == {"tz": "America/Chicago"}
    assert found.calls[0].id != found.calls[1].id
    tagged = "<|python_tag|>" + WEATHER_JSON + ';<|python_tag|>{"name": "t", "parameters": {}};'
    assert [name for name, _ in calls_of(Llama, tagged)] == ["get_weather", "t"]
    assert [name for name, _ in calls_of(Llama, WEATHER_JSON + "\n" + WEATHER_JSON)] == [
        "get_weather",
        "get_weather",
    ]


def test_llama3_json_arguments_key_and_other_keys() -> None:
    assert calls_of(Llama, '{"name": "f", "arguments": {"a": 1}}') == [("f", {"a": 1})]
    both = '{"name": "f", "arguments": {"a": 1}, "parameters": {"b": 2}}'
    assert calls_of(Llama, both) == [("f", {"a": 1})]
    typed = '{"type": "function", "name": "get_time", "parameters": {}}'
    assert calls_of(Llama, typed) == [("get_time", {})]


def test_llama3_json_arguments_given_as_text_are_kept() -> None:
    found = Llama.extract('{"name": "f", "parameters": "{\\"a\\": 1}"}')
    assert found.calls[0].arguments == '{"a": 1}'


def test_llama3_json_nested_arguments_and_tricky_strings() -> None:
    text = LLAMA_CALLS[8]
    assert calls_of(Llama, text) == [
        (
            "run",
            {
                "code": 'if (a) { b(); }; x = "}"',
                "args": [[1, 2], {"k": [None, True, 1500.0]}],
                "note": "a, b; [c] {d} 'e'",
            },
        )
    ]


def test_llama3_json_unicode_is_kept_as_is() -> None:
    call = Llama.extract(LLAMA_CALLS[9]).calls[0]
    assert "東京は晴れ 🌞" in call.arguments and "français" in call.arguments
    assert json.loads(call.arguments) == {"text": "東京は晴れ 🌞", "to": "français"}


@pytest.mark.parametrize("text", LLAMA_CONTENT)
def test_llama3_json_text_that_is_not_all_calls_is_content(text: str) -> None:
    assert_content(Llama, text)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "f", "parameters": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"name": "f", "parameters": ' + '{"a": ' * 100_000,
    ],
)
def test_llama3_json_deep_nesting_is_content_not_a_crash(text: str) -> None:
    assert_content(Llama, text)
    assert run_stream(Llama.stream(), [text[:5], text[5:]]) == (text, [])


# -- pythonic: whole outputs ----------------------------------------------------------------

PY_WEATHER = "[get_weather(city='San Francisco', metric='celsius')]"
PY_CALLS = [
    PY_WEATHER,
    "  \n" + PY_WEATHER + "\n",
    '[get_weather(city="Paris", unit="c"), search(q="x")]',
    "[get_time()]",
    "[register_user(name='John Doe', age=37, address={'city': 'San Francisco', "
    "'state': 'CA'}, role=None, passed_test=True, aliases=['John', 'Johnny'])]",
    '[f(s=\'a, b) [c] {d}\', q="it\'s \\"x\\"", t=(1, -2.5, +3), n=null, y=true, z=false)]',
    "[tools.web.search(query='東京 天気 🌞')]",
    "[f(a=[[1, [2, [3]]], {'k': {'j': []}}], b={1: 'one', None: 0})]  # done",
]
PY_CONTENT = [
    "",
    " ",
    "The weather in Paris is sunny.",
    "Sure: " + PY_WEATHER,
    "[]",
    "[1, 2]",
    "['get_weather']",
    "[get_weather(city='Paris')",  # cut short
    "[get_weather('Paris')]",  # positional
    "[get_weather(**{'city': 'Paris'})]",
    "[get_weather(city=paris)]",  # a variable
    "[get_weather(city=open('/etc/passwd').read())]",
    "[f(a=__import__('os').system('true'))]",
    "[f(a=1 + 2)]",
    "[f(a={1, 2})]",
    "[f(a=b'x')]",
    "[f(a=1j)]",
    "[f(a=...)]",
    "[f(a=-True)]",
    "[f(a=f'{x}')]",
    "[f(a=lambda: 0)]",
    "[f(a={**d})]",
    "[f(a={(1, 2): 3})]",
    "[f(a=1e999)]",
    "[f(a=1, a=2)]",
    "[f()()]",
    "[a[0]()]",
    "[f(a=1)] I called it.",
    "[f(a=1)]\n[g()]",
    "[f(a='\\U')]",
    "[f(a=1), 2]",
    "[f(a=1)][0]",  # an expression on the list
    "[f(a=x) for x in (1, 2)]",
]


def test_pythonic_single_call() -> None:
    assert calls_of(Pythonic, PY_WEATHER) == [
        ("get_weather", {"city": "San Francisco", "metric": "celsius"})
    ]
    assert calls_of(Pythonic, "  \n" + PY_WEATHER + "\n") == calls_of(Pythonic, PY_WEATHER)
    assert calls_of(Pythonic, "[get_time()]") == [("get_time", {})]


def test_pythonic_several_calls() -> None:
    found = Pythonic.extract('[get_weather(city="Paris", unit="c"), search(q="x")]')
    assert [(c.name, json.loads(c.arguments)) for c in found.calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"}),
        ("search", {"q": "x"}),
    ]
    assert found.calls[0].id != found.calls[1].id


def test_pythonic_literal_arguments_become_a_json_object() -> None:
    assert calls_of(Pythonic, PY_CALLS[4]) == [
        (
            "register_user",
            {
                "name": "John Doe",
                "age": 37,
                "address": {"city": "San Francisco", "state": "CA"},
                "role": None,
                "passed_test": True,
                "aliases": ["John", "Johnny"],
            },
        )
    ]
    assert calls_of(Pythonic, PY_CALLS[5]) == [
        (
            "f",
            {
                "s": "a, b) [c] {d}",
                "q": 'it\'s "x"',
                "t": [1, -2.5, 3],
                "n": None,
                "y": True,
                "z": False,
            },
        )
    ]


def test_pythonic_nesting_dotted_names_and_unicode() -> None:
    assert calls_of(Pythonic, PY_CALLS[7]) == [
        ("f", {"a": [[1, [2, [3]]], {"k": {"j": []}}], "b": {"1": "one", "null": 0}})
    ]
    call = Pythonic.extract(PY_CALLS[6]).calls[0]
    assert call.name == "tools.web.search"
    assert call.arguments == '{"query": "東京 天気 🌞"}'


@pytest.mark.parametrize("text", PY_CONTENT)
def test_pythonic_text_that_is_not_a_list_of_literal_calls_is_content(text: str) -> None:
    assert_content(Pythonic, text)


@pytest.mark.parametrize(
    "value",
    [
        "[" * 100_000 + "]" * 100_000,  # too many nested parentheses: SyntaxError
        "-" * 100_000 + "1",  # the parser's stack: MemoryError
        "1+" * 100_000 + "1",  # building the tree: RecursionError
        "9" * 5000,  # past the integer digits limit
    ],
)
def test_pythonic_deep_or_huge_input_is_content_not_a_crash(value: str) -> None:
    text = f"[f(a={value})]"
    assert_content(Pythonic, text)
    assert run_stream(Pythonic.stream(), [text[:3], text[3:]]) == (text, [])


def test_pythonic_nesting_as_deep_as_the_parser_allows_is_a_call() -> None:
    depth = 190  # with the call's own brackets, just under Python's 200 levels
    text = "[f(a=" + "[" * depth + "]" * depth + ")]"
    expected: list = []
    for _ in range(depth - 1):
        expected = [expected]
    assert calls_of(Pythonic, text) == [("f", {"a": expected})]


# -- both: registry and streams -------------------------------------------------------------


def test_registered_under_their_vllm_names() -> None:
    assert get_tool_parser("llama3_json") is Llama3JsonToolParser
    assert get_tool_parser("pythonic") is PythonicToolParser
    assert {"hermes", "llama3_json", "pythonic"} <= set(TOOL_PARSER_NAMES)


CASES = [(Llama, t) for t in LLAMA_CALLS + LLAMA_CONTENT] + [
    (Pythonic, t) for t in PY_CALLS + PY_CONTENT
]


@pytest.mark.parametrize(("parser", "text"), CASES)
def test_stream_equals_extract_for_every_split(parser: type[ToolParser], text: str) -> None:
    expected = extracted(parser, text)
    for seed, pieces in enumerate(every_split(text, seed=len(text))):
        assert run_stream(parser.stream(), pieces) == expected, (seed, pieces)


def test_the_cases_cover_calls_and_content() -> None:
    # Guards the stream test above against passing on cases that never have calls.
    for parser, calls, content in (
        (Llama, LLAMA_CALLS, LLAMA_CONTENT),
        (Pythonic, PY_CALLS, PY_CONTENT),
    ):
        assert all(parser.extract(t).calls for t in calls)
        assert not any(parser.extract(t).calls for t in content)


@pytest.mark.parametrize(("parser", "prose"), [(Llama, "It is sunny."), (Pythonic, "Sunny.")])
def test_stream_passes_prose_through_at_once(parser: type[ToolParser], prose: str) -> None:
    stream = parser.stream()
    assert stream.feed("\n ").content == ""  # blank: may still precede a call
    assert stream.feed(prose[:3]).content == "\n " + prose[:3]
    assert stream.feed(prose[3:]).content == prose[3:]
    assert stream.finish() == ToolDelta()


def test_llama3_json_stream_holds_a_partial_tag_then_decides() -> None:
    stream = Llama.stream()
    assert stream.feed("<|py").content == ""
    assert stream.feed("thon_tag|>").content == ""
    assert stream.feed(WEATHER_JSON) == ToolDelta()
    last = stream.finish()
    assert last.content == "" and [c.name for c in last.calls] == ["get_weather"]
    other = Llama.stream()
    assert other.feed("<|py").content == ""
    assert other.feed("x>").content == "<|pyx>"


def test_pythonic_stream_sends_the_calls_at_finish() -> None:
    stream = Pythonic.stream()
    assert stream.feed(PY_WEATHER[:10]) == ToolDelta()
    assert stream.feed(PY_WEATHER[10:]) == ToolDelta()
    last = stream.finish()
    assert [(c.index, c.name) for c in last.calls] == [(0, "get_weather")]
    assert json.loads(last.calls[0].arguments) == {"city": "San Francisco", "metric": "celsius"}
