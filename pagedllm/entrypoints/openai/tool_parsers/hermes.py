"""Hermes / Qwen2.5 tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
one block per call, possibly with text around them."""

from __future__ import annotations

import json
import re

from pagedllm.entrypoints.openai.tool_parsers import model_json
from pagedllm.entrypoints.openai.tool_parsers.tool_parser import (
    ExtractedToolCalls,
    ToolCall,
    ToolDelta,
    ToolParser,
    ToolStream,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)


def parse_call(body: str) -> ToolCall | None:
    """A block's JSON as a call, or None when it is not one."""
    try:  # the model's text: NaN, inf or nesting past the bound is not a call either
        obj = model_json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(obj["name"], arguments)


def _held_back(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class HermesToolParser(ToolParser):
    @classmethod
    def extract(cls, text: str) -> ExtractedToolCalls:
        if OPEN not in text:
            return ExtractedToolCalls(text, [])
        calls = []
        for match in _BLOCK.finditer(text):
            call = parse_call(match.group(1).strip())
            if call is None:
                return ExtractedToolCalls(text, [])
            calls.append(call)
        content = _BLOCK.sub("", text)
        return ExtractedToolCalls(content if content.strip() else None, calls)

    @classmethod
    def stream(cls) -> ToolStream:
        return HermesToolStream()


class HermesToolStream(ToolStream):
    """Content passes through as it comes (holding back what may begin ``<tool_call>``);
    each call is sent whole, with its id, name and arguments, once its block closes."""

    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False
        self._index = 0

    def feed(self, text: str) -> ToolDelta:
        self._buffer += text
        out = ToolDelta()
        while True:
            if not self._inside:
                at = self._buffer.find(OPEN)
                if at < 0:
                    keep = _held_back(self._buffer, OPEN)
                    cut = len(self._buffer) - keep
                    out.content += self._buffer[:cut]
                    self._buffer = self._buffer[cut:]
                    return out
                out.content += self._buffer[:at]
                self._buffer = self._buffer[at + len(OPEN) :]
                self._inside = True
            else:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    return out
                body, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE) :]
                self._inside = False
                out += self._close(body)

    def finish(self) -> ToolDelta:
        body, self._buffer = self._buffer, ""
        if not self._inside:
            return ToolDelta(content=body)
        self._inside = False
        return self._close(body, closed=False)

    def _close(self, body: str, closed: bool = True) -> ToolDelta:
        call = parse_call(body.strip())
        if call is None:
            return ToolDelta(content=OPEN + body + (CLOSE if closed else ""))
        self._index += 1
        return ToolDelta(calls=[call.as_delta(self._index - 1)])
