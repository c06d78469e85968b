"""DeepSeek-R1 reasoning parser: extract() cases, streaming hold-back, split invariance."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from pagedllm.entrypoints.openai.reasoning import (
    REASONING_PARSER_NAMES,
    DeepSeekR1ReasoningParser,
    ReasoningParser,
    get_reasoning_parser,
)
from pagedllm.entrypoints.openai.reasoning.deepseek_r1 import _partial_tag_len
from tests.unit.reasoning_helpers import stream_through

Parser = DeepSeekR1ReasoningParser


def stream(pieces: list[str], prompt_opened_think: bool) -> tuple[str, str]:
    return stream_through(Parser, pieces, prompt_opened_think)


def reference_split(text: str, in_reasoning: bool) -> tuple[str, str]:
    """Oracle written independently of the parser: regex split, then walk the parts."""
    reasoning, content = "", ""
    for i, part in enumerate(re.split(r"(<think>|</think>)", text)):
        if i % 2:
            in_reasoning = part == "<think>"
        elif in_reasoning:
            reasoning += part
        else:
            content += part
    return reasoning, content


def is_lone_close(text: str, prompt_opened_think: bool) -> bool:
    """The documented streaming exception: no opened prompt and the first tag is `</think>`."""
    tags = re.findall(r"<think>|</think>", text)
    return not prompt_opened_think and bool(tags) and tags[0] == "</think>"


def reference_extract(text: str, prompt_opened_think: bool) -> tuple[str | None, str | None]:
    in_reasoning = prompt_opened_think or is_lone_close(text, prompt_opened_think)
    reasoning, content = reference_split(text, in_reasoning)
    return reasoning or None, content or None


def splits(text: str) -> Iterator[list[str]]:
    """Every split of `text` into 1, 2 or 3 pieces (empty pieces included)."""
    n = len(text)
    yield [text]
    for i in range(n + 1):
        yield [text[:i], text[i:]]
        for j in range(i, n + 1):
            yield [text[:i], text[i:j], text[j:]]


def check_text(text: str, pieces_list: list[list[str]]) -> int:
    """Assert streaming/extract agreement for `text` under every given split; count checks."""
    checks = 0
    for prompt_opened_think in (False, True):
        extracted = Parser.extract(text, prompt_opened_think)
        assert extracted == reference_extract(text, prompt_opened_think), text
        expected_stream = reference_split(text, prompt_opened_think)
        if not is_lone_close(text, prompt_opened_think):
            assert expected_stream == (extracted[0] or "", extracted[1] or ""), text
        for pieces in pieces_list:
            assert "".join(pieces) == text
            assert stream(pieces, prompt_opened_think) == expected_stream, (pieces, text)
            checks += 1
    return checks


# -- non-streaming -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "opened", "expected"),
    [
        ("<think>abc</think>\n\ndef", False, ("abc", "\n\ndef")),
        ("<think>abc</think>\n\ndef", True, ("abc", "\n\ndef")),
        ("abc</think>def", False, ("abc", "def")),
        ("abc</think>def", True, ("abc", "def")),
        ("abc</think>", False, ("abc", None)),
        (" abc </think> ", False, (" abc ", " ")),
        ("<think>abc", False, ("abc", None)),
        ("<think>", False, (None, None)),
        ("abc", False, (None, "abc")),
        ("abc", True, ("abc", None)),
        ("a < b > c </thin", False, (None, "a < b > c </thin")),
        ("a < b > c </thin", True, ("a < b > c </thin", None)),
        ("", False, (None, None)),
        ("", True, (None, None)),
        ("<think></think>x", False, (None, "x")),
        ("\n<think>a</think>b", False, ("a", "\nb")),
        ("<think>a</think>b<think>c</think>d", False, ("ac", "bd")),
        ("<think>a</think>b<think>c", False, ("ac", "b")),
        ("<think>a</think>b</think>c", False, ("a", "bc")),
        ("a</think>b<think>c</think>d", False, ("ac", "bd")),
        ("a<think>b<think>c</think>d", True, ("abc", "d")),
        ("<think>思考中。</think>答案是 42。", False, ("思考中。", "答案是 42。")),
    ],
)
def test_extract(text: str, opened: bool, expected: tuple[str | None, str | None]):
    assert Parser.extract(text, opened) == expected
    assert Parser.extract(text, prompt_opened_think=opened) == expected


# -- streaming -----------------------------------------------------------------------------


def test_feed_holds_a_split_end_tag_then_routes_both_sides():
    parser = Parser(prompt_opened_think=True)
    assert parser.feed("abc</thi") == ("abc", "")
    assert parser.feed("nk>de") == ("", "de")
    assert parser.feed("f") == ("", "f")
    assert parser.finish() == ("", "")


def test_feed_releases_held_text_that_is_not_a_tag():
    parser = Parser(prompt_opened_think=False)
    assert parser.feed("x<thi") == ("", "x")
    assert parser.feed("s is") == ("", "<this is")
    assert parser.feed(" <") == ("", " ")
    assert parser.feed("") == ("", "")
    assert parser.feed("/") == ("", "")
    assert parser.feed("b>") == ("", "</b>")


def test_feed_one_delta_with_end_of_reasoning_and_start_of_content():
    parser = Parser(prompt_opened_think=True)
    assert parser.feed("a</think>b") == ("a", "b")


def test_feed_starts_in_reasoning_when_output_opens_think():
    parser = Parser(prompt_opened_think=False)
    assert parser.feed("<") == ("", "")
    assert parser.feed("think>") == ("", "")
    assert parser.feed("abc") == ("abc", "")
    assert parser.feed("</think>x") == ("", "x")


@pytest.mark.parametrize(
    ("text", "held"),
    [("", 0), ("x<", 1), ("<th", 3), ("a</", 2), ("</think", 7), ("a<think>", 0), ("a>", 0)],
)
def test_partial_tag_len_is_a_proper_tag_prefix_suffix(text: str, held: int):
    assert _partial_tag_len(text) == held


def test_feed_routes_text_after_a_complete_tag_at_the_end_of_a_delta():
    parser = Parser(prompt_opened_think=False)
    assert parser.feed("a<think>") == ("", "a")
    assert parser.feed("b") == ("b", "")
    assert parser.finish() == ("", "")


def test_feed_holds_nothing_when_no_tag_can_start():
    parser = Parser(prompt_opened_think=False)
    assert parser.feed("a<b") == ("", "a<b")
    assert parser.feed("<think>>") == (">", "")
    assert parser.feed("x>") == ("x>", "")


def test_finish_flushes_a_partial_tag_in_the_current_mode():
    parser = Parser(prompt_opened_think=True)
    assert parser.feed("x</th") == ("x", "")
    assert parser.finish() == ("</th", "")
    parser = Parser(prompt_opened_think=False)
    assert parser.feed("y<thin") == ("", "y")
    assert parser.finish() == ("", "<thin")


def test_lone_close_without_opened_prompt_is_the_documented_exception():
    text = "abc</think>def"
    assert Parser.extract(text, prompt_opened_think=False) == ("abc", "def")
    for pieces in splits(text):
        assert stream(pieces, prompt_opened_think=False) == ("", "abcdef")
        assert stream(pieces, prompt_opened_think=True) == ("abc", "def")


def test_unclosed_and_prompt_opened_stream_all_reasoning():
    assert stream(["<think>", "abc", "</thi"], prompt_opened_think=False) == ("abc</thi", "")
    assert stream(["still ", "thinking"], prompt_opened_think=True) == ("still thinking", "")
    assert stream(["no ", "tags"], prompt_opened_think=False) == ("", "no tags")


# -- split invariance ----------------------------------------------------------------------

SHORT_TEXTS = [
    "",
    "abc",
    "<",
    "<think>",
    "</think>",
    "<think>abc</think>\n\ndef",
    "abc</think>def",
    "<think>abc",
    "<thi",
    "a</thi",
    "<<think>>",
    "<</think>x",
    "a<b>c</b>",
    "<think></think>",
    "</think></think>x",
    "<think>a</think>b<think>c</think>d",
    "a<think>b",
    "x</think>y<think>z",
    "<think><think>a</think>",
    "<t</think>",
    "</<think>",
    "<think>想</think>答",
]


def test_split_invariance_exhaustive_for_short_texts():
    checks = sum(check_text(text, list(splits(text))) for text in SHORT_TEXTS)
    # 1 + (n + 1) + (n + 1)(n + 2) / 2 splits per text, for both values of the flag.
    expected = sum(2 * (1 + (n + 1) + (n + 1) * (n + 2) // 2) for n in map(len, SHORT_TEXTS))
    assert checks == expected


CHUNKS = [
    *["思考", "答案是", "。", "好的，让我想想", "\n", " ", "abc", "x"],
    *["<think>", "</think>", "<", ">", "</", "/", "<thi", "nk>", "think", "<t", "</think"],
]


def random_pieces(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, len(text))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def test_split_invariance_random_long_texts():
    rng = random.Random(0)
    checks = 0
    for _ in range(400):
        text = "".join(rng.choices(CHUNKS, k=rng.randint(5, 40)))
        checks += check_text(text, [random_pieces(rng, text) for _ in range(5)])
    assert checks == 400 * 2 * 5


# -- prompt and registry -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("<｜User｜>hi<｜Assistant｜><think>\n", True),
        ("<think>", True),
        ("<think> \n\t", True),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("<think>partial thought", False),
        ("hi<｜Assistant｜>", False),
        ("", False),
    ],
)
def test_prompt_opens_think(prompt: str, expected: bool):
    assert Parser.prompt_opens_think(prompt) is expected


def test_get_reasoning_parser():
    parser_cls = get_reasoning_parser("deepseek_r1")
    assert parser_cls is DeepSeekR1ReasoningParser
    assert issubclass(parser_cls, ReasoningParser)
    assert REASONING_PARSER_NAMES == ("deepseek_r1", "qwen3")


def test_get_reasoning_parser_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"'granite'.*supported: deepseek_r1, qwen3"):
        get_reasoning_parser("granite")
