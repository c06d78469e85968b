"""Llama 3.1 / 3.2 / 3.3 JSON tool calls: ``{"name": ..., "parameters": {...}}``, optionally
after ``<|python_tag|>``, several separated by ``;``. Example:
``<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": ...}``.

Rules (vLLM's ``llama3_json``, with the differences marked *):
- The output holds calls only if, past leading whitespace, it starts with ``{`` or
  ``<|python_tag|>``; otherwise it is all content. (* vLLM's non-streaming parser also takes
  JSON found after prose and drops the prose; its streaming parser, like this one, looks only
  at the start, so prose that quotes JSON stays content, and both modes agree.)
- From there the text is JSON objects with nothing between or around them but whitespace,
  ``;`` and ``<|python_tag|>``. Each object needs a string ``name`` and ``arguments`` or
  ``parameters`` (``arguments`` wins when both are there); other keys, such as
  ``"type": "function"``, are ignored.
- A call's arguments are sent as their JSON text; (*) a string is taken to be that text
  already, as the hermes parser does, rather than quoted again.
- Anything else leaves the whole output as content, calls and all: JSON that does not parse
  or is not a call, (*) text after the calls, (*) NaN or infinite numbers (arguments must be
  valid JSON), nesting too deep for the decoder.
- When there are calls, the content is None.

Streaming (``start_gated.StartGatedStream``, shared with the pythonic parser): content
passes through as it comes until the output starts like a call; from then on all of it is
held and extracted whole at ``finish``, so calls arrive in the last delta and match
``extract`` exactly.
"""

from __future__ import annotations

import json
from typing import Any

from pagedllm.entrypoints.openai.tool_parsers import model_json
from pagedllm.entrypoints.openai.tool_parsers.start_gated import StartGatedParser
from pagedllm.entrypoints.openai.tool_parsers.tool_parser import (
    ToolCall,
)

PYTHON_TAG = "<|python_tag|>"
_STARTS = ("{", PYTHON_TAG)


def _skip_separators(text: str, pos: int) -> int:
    """The first position at or after ``pos`` that is not whitespace, ``;`` or the tag."""
    while pos < len(text):
        if text.startswith(PYTHON_TAG, pos):
            pos += len(PYTHON_TAG)
        elif text[pos] == ";" or text[pos].isspace():
            pos += 1
        else:
            break
    return pos


def _as_call(obj: Any) -> ToolCall | None:
    """A decoded JSON value as a call, or None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    key = "arguments" if "arguments" in obj else "parameters"
    if key not in obj:
        return None
    arguments = obj[key]
    if isinstance(arguments, str):
        return ToolCall(obj["name"], arguments)
    try:
        # allow_nan=False: the client gets JSON text, and NaN / Infinity are not JSON.
        text = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):
        return None
    return ToolCall(obj["name"], text)


def parse_calls(text: str) -> list[ToolCall]:
    """The calls that make up ``text``; none unless all of it, separators aside, is calls."""
    calls = []
    pos = _skip_separators(text, 0)
    while pos < len(text):
        try:  # ValueError also for NaN, inf and nesting past the decoder's depth
            obj, pos = model_json.raw_decode(text, pos)
        except ValueError:
            return []
        call = _as_call(obj)
        if call is None:
            return []
        calls.append(call)
        pos = _skip_separators(text, pos)
    return calls


class Llama3JsonToolParser(StartGatedParser):
    starts = _STARTS

    @staticmethod
    def parse_calls(text: str) -> list[ToolCall]:
        return parse_calls(text)
