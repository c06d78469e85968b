"""Qwen3 reasoning parser: vLLM 0.26's rules, thinking on and off, streaming == extraction."""

from __future__ import annotations

import random
import re

import pytest

from pagedllm.entrypoints.openai.reasoning import (
    REASONING_PARSER_NAMES,
    Qwen3ReasoningParser,
    get_reasoning_parser,
)
from tests.unit.reasoning_helpers import stream_through

Parser = Qwen3ReasoningParser
ANSWER = "The answer is 4."
# The ends of prompts rendered by Qwen3 templates.
THINKING_PROMPT = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
OPENED_PROMPT = THINKING_PROMPT + "<think>\n"  # Qwen3-*-Thinking-2507
NO_THINKING_PROMPT = THINKING_PROMPT + "<think>\n\n</think>\n\n"  # enable_thinking=False


def stream(pieces: list[str], prompt_opened_think: bool) -> tuple[str, str]:
    return stream_through(Parser, pieces, prompt_opened_think)


def reference(text: str, thinking: bool) -> tuple[str | None, str | None]:
    """Oracle written apart from the parser, from vLLM 0.26's state machine."""
    if not thinking:
        return None, text or None
    end = re.search(r"</think>|<tool_call>", text)
    if end is None:
        head, tail = text, ""
    else:
        resume = end.start() if end.group() == "<tool_call>" else end.end()
        head, tail = text[: end.start()], text[resume:]
    return head.replace("<think>", "") or None, tail or None


def random_pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text), rng.randint(0, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def test_prompt_decides_whether_the_output_starts_in_reasoning() -> None:
    assert Parser.prompt_opens_think(THINKING_PROMPT)
    assert Parser.prompt_opens_think(OPENED_PROMPT)
    assert not Parser.prompt_opens_think(NO_THINKING_PROMPT)


def test_thinking_output_with_both_tags() -> None:
    text = f"<think>\nLet me add.\n</think>\n\n{ANSWER}"
    assert Parser.extract(text, True) == ("\nLet me add.\n", f"\n\n{ANSWER}")


def test_prompt_opened_think_output_has_only_the_close_tag() -> None:
    text = f"Let me add.\n</think>\n\n{ANSWER}"
    assert Parser.extract(text, Parser.prompt_opens_think(OPENED_PROMPT)) == (
        "Let me add.\n",
        f"\n\n{ANSWER}",
    )


def test_output_without_tags_is_reasoning_while_thinking_as_vllm_does() -> None:
    assert Parser.extract(ANSWER, Parser.prompt_opens_think(THINKING_PROMPT)) == (ANSWER, None)


def test_enable_thinking_false_output_is_all_content_verbatim() -> None:
    opened = Parser.prompt_opens_think(NO_THINKING_PROMPT)
    assert Parser.extract(ANSWER, opened) == (None, ANSWER)
    odd = "a</think>b<think>c"
    assert Parser.extract(odd, opened) == (None, odd)
    assert stream(list(odd), opened) == ("", odd)


def test_output_cut_inside_the_reasoning_is_all_reasoning() -> None:
    assert Parser.extract("<think>\nFirst, 2+2 is", True) == ("\nFirst, 2+2 is", None)
    assert Parser.extract("<think>\nFirst </thi", True) == ("\nFirst </thi", None)


def test_tool_call_ends_the_reasoning_and_starts_the_content() -> None:
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
    assert Parser.extract(f"<think>\nI need a tool.\n{call}", True) == ("\nI need a tool.\n", call)


def test_after_the_reasoning_tags_are_plain_content() -> None:
    text = "<think>a<think>b</think>c</think>d<think>e"
    assert Parser.extract(text, True) == ("ab", "c</think>d<think>e")


def test_empty_output() -> None:
    assert Parser.extract("", True) == (None, None)
    assert Parser.extract("", False) == (None, None)
    assert Parser.extract("<think></think>", True) == (None, None)


def test_stream_holds_back_partial_tags_only_while_reasoning() -> None:
    parser = Parser(True)
    assert parser.feed("<think>\nabc<") == ("\nabc", "")
    assert parser.feed("/thi") == ("", "")
    assert parser.feed("nk>\n\nHi <") == ("", "\n\nHi <")
    assert parser.feed("/think>") == ("", "/think>")
    assert parser.finish() == ("", "")


def test_stream_releases_a_held_back_non_tag() -> None:
    parser = Parser(True)
    assert parser.feed("x <t") == ("x ", "")
    assert parser.feed("hin") == ("", "")
    assert parser.feed("g") == ("<thing", "")
    assert parser.feed("<tool") == ("", "")
    assert parser.finish() == ("<tool", "")


TEXTS = [
    f"<think>\nLet me add.\n</think>\n\n{ANSWER}",
    f"Let me add.\n</think>\n\n{ANSWER}",
    ANSWER,
    "<think>\nFirst, 2+2 is",
    '<think>plan<tool_call>\n{"name": "f"}\n</tool_call>',
    "<think>a<think>b</think>c</think>d<think>e",
    "</<think>think> <tool_ca <tool_call",
    "<think>思考中…</think>答えは４です。",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("thinking", [True, False])
def test_extract_matches_the_reference(text: str, thinking: bool) -> None:
    assert Parser.extract(text, thinking) == reference(text, thinking)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("thinking", [True, False])
def test_stream_equals_extract_for_every_chunking(text: str, thinking: bool) -> None:
    reasoning, content = Parser.extract(text, thinking)
    expected = (reasoning or "", content or "")
    rng = random.Random(text)
    chunkings = [[text], list(text), *(random_pieces(text, rng) for _ in range(60))]
    for i in range(len(text) + 1):
        chunkings.append([text[:i], text[i:]])
    for pieces in chunkings:
        assert stream(pieces, thinking) == expected, pieces


@pytest.mark.parametrize("seed", range(200))
def test_random_texts_stream_and_extract_agree_with_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    parts = ["<think>", "</think>", "<tool_call>", "<", "</", "think>", "a", "é\n", " "]
    text = "".join(rng.choices(parts, k=rng.randint(0, 10)))
    for thinking in (True, False):
        expected = reference(text, thinking)
        assert Parser.extract(text, thinking) == expected, text
        pieces = random_pieces(text, rng)
        assert stream(pieces, thinking) == (expected[0] or "", expected[1] or ""), pieces


def test_registered_as_qwen3() -> None:
    assert "qwen3" in REASONING_PARSER_NAMES
    assert get_reasoning_parser("qwen3") is Qwen3ReasoningParser
