"""Mistral tool calls: the ``[TOOL_CALLS]`` marker, then the calls, in one of two forms.

- JSON list, as models on tokenizers before v11 write it (Mistral-7B-Instruct-v0.3,
  Mixtral-8x22B, Mistral-Nemo): ``[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]``.
- Name form, as models on v11+ tokenizers write it (Mistral-Small-3.2, Devstral, Magistral):
  one marker per call, ``[TOOL_CALLS]f[ARGS]{...}[TOOL_CALLS]g[ARGS]{...}``, optionally with
  the model's own id, ``f[CALL_ID]a1b2c3d4e[ARGS]{...}``.

The markers are special tokens: they reach the parser only when the output is detokenized
without skipping special tokens (vLLM sets ``skip_special_tokens=False`` for this parser).

Rules:

- No marker: the whole text is content. Otherwise the content is the text before the first
  marker, and the text after each marker, up to the next one, is one segment.
- A segment whose first non-blank character is ``[`` is a JSON list of calls, each an object
  with a string ``name`` and ``arguments`` that are serialised as JSON (a string is kept as
  is; absent, ``{}``). Any other segment is in name form: the name is the text before the
  first ``{`` (as in vLLM, so a missing ``[ARGS]`` does no harm), less a trailing ``[ARGS]``
  and any ``[CALL_ID]id``; the arguments are the JSON object from that ``{``, kept as
  generated.
- Text after a segment's JSON, up to the next marker, is dropped (vLLM 0.26 ignores what
  follows the list too: models may emit stray tokens there).
- Malformed: a segment without a complete JSON value, an empty list, an item that is not a
  call, a name that is empty or holds blanks or brackets, name-form arguments that are not a
  JSON object, JSON holding NaN, Infinity or a number past a float's range (not JSON once
  sent on). Then the whole text is content.
- Ids are 9 ASCII letters and digits, the only shape mistral-common's validator accepts
  (vLLM 0.26 generates the same); the model's own id (``[CALL_ID]`` or a list item's ``id``) is kept
  when it has that shape.

Where vLLM 0.26 differs: it returns name-form calls whose arguments do not parse (here the
text stays content, as with every parser here); it leaves ``[CALL_ID]id`` inside the name; it
fails on a second marker in the list form (here each list is read); it JSON-encodes again
list-form arguments given as a string; it picks the form from the tokenizer's version (here
from the text, so both forms work with any tokenizer).
"""

from __future__ import annotations

import json
import random
import re
import string
from enum import Enum
from typing import Any

from pagedllm.entrypoints.openai.tool_parsers import model_json
from pagedllm.entrypoints.openai.tool_parsers.tool_parser import (
    ExtractedToolCalls,
    ToolCall,
    ToolDelta,
    ToolParser,
    ToolStream,
)

MARKER = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
_ID_CHARS = string.ascii_letters + string.digits
_ID_LENGTH = 9
_NAME = re.compile(r"[^\s\[\]]+")


def mistral_call_id() -> str:
    """A fresh id in Mistral's shape (not a secret: only unique within a conversation)."""
    return "".join(random.choices(_ID_CHARS, k=_ID_LENGTH))


def _id_or_new(candidate: object) -> str:
    if (
        isinstance(candidate, str)
        and len(candidate) == _ID_LENGTH
        and all(c in _ID_CHARS for c in candidate)
    ):
        return candidate
    return mistral_call_id()


def _is_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _decode(segment: str) -> tuple[int, int, Any] | None:
    """(start, end, value) of the segment's JSON value; None while it is incomplete (or
    invalid: the two cannot be told apart before the segment ends). NaN, inf and nesting
    too deep are invalid: name-form arguments are sent as generated, so they must be JSON."""
    stripped = segment.lstrip()
    start = len(segment) - len(stripped) if stripped.startswith("[") else segment.find("{")
    if start < 0:
        return None
    try:
        value, end = model_json.raw_decode(segment, start)
    except ValueError:
        return None
    return start, end, value


def _list_item(item: Any) -> ToolCall | None:
    if not isinstance(item, dict) or not _is_name(item.get("name")):
        return None
    arguments = item.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(item["name"], arguments, _id_or_new(item.get("id")))


def _list_calls(value: Any) -> list[ToolCall] | None:
    if not isinstance(value, list) or not value:
        return None
    calls = []
    for item in value:
        call = _list_item(item)
        if call is None:
            return None
        calls.append(call)
    return calls


def _named_call(head: str, arguments: str, value: Any) -> list[ToolCall] | None:
    name, _, call_id = head.strip().removesuffix(ARGS).partition(CALL_ID)
    if not isinstance(value, dict) or not _is_name(name.strip()):
        return None
    return [ToolCall(name.strip(), arguments, _id_or_new(call_id.strip()))]


def parse_segment(segment: str) -> list[ToolCall] | None:
    """The calls of the text after one marker, or None when it is malformed."""
    decoded = _decode(segment)
    if decoded is None:
        return None
    start, end, value = decoded
    if segment[start] == "[":
        return _list_calls(value)
    return _named_call(segment[:start], segment[start:end], value)


def _held_back(text: str) -> int:
    """Length of the end of ``text`` that may begin the marker ("[" is only its first
    character, so at most one end qualifies)."""
    for size in range(min(len(MARKER) - 1, len(text)), 0, -1):
        if MARKER.startswith(text[-size:]):
            return size
    return 0


class MistralToolParser(ToolParser):
    needs_special_tokens = True  # [TOOL_CALLS] is a special token in Mistral tokenizers

    @classmethod
    def extract(cls, text: str) -> ExtractedToolCalls:
        if MARKER not in text:
            return ExtractedToolCalls(text, [])
        content, *segments = text.split(MARKER)
        calls: list[ToolCall] = []
        for segment in segments:
            found = parse_segment(segment)
            if found is None:
                return ExtractedToolCalls(text, [])
            calls.extend(found)
        return ExtractedToolCalls(content if content.strip() else None, calls)

    @classmethod
    def stream(cls) -> ToolStream:
        return MistralToolStream()


class _Mode(Enum):
    CONTENT = "content"  # before the first marker, or after a malformed segment
    SEGMENT = "segment"  # after a marker, until its JSON closes
    SKIP = "skip"  # after a call's JSON, until the next marker


class MistralToolStream(ToolStream):
    """Content passes through as it comes (holding back what may begin the marker). After a
    marker the segment is buffered; its calls are sent whole, each with its id, name and
    arguments, as soon as its JSON closes (or the next marker or the end shows it never
    will). The rest of the segment is then dropped, as extraction drops it. A malformed
    segment is sent as content, marker included, with the text after it."""

    def __init__(self) -> None:
        self._buffer = ""
        self._mode = _Mode.CONTENT
        self._index = 0

    def feed(self, text: str) -> ToolDelta:
        self._buffer += text
        # A JSON value can only close on a closing bracket: decoding waits for one.
        may_close = "}" in text or "]" in text
        out = ToolDelta()
        while self._advance(out, may_close):
            pass
        return out

    def finish(self) -> ToolDelta:
        rest, self._buffer = self._buffer, ""
        out = self._settle(rest)
        self._mode = _Mode.CONTENT
        return out

    def _advance(self, out: ToolDelta, may_close: bool) -> bool:
        """Pass on what the buffer decides; True when the mode changed, so the rest of the
        buffer is to be read again."""
        at = self._buffer.find(MARKER)
        if at >= 0:
            out += self._settle(self._buffer[:at])
            self._buffer = self._buffer[at + len(MARKER) :]
            self._mode = _Mode.SEGMENT
            return True
        if self._mode is _Mode.SEGMENT:
            return may_close and self._close_early(out)
        cut = len(self._buffer) - _held_back(self._buffer)
        if self._mode is _Mode.CONTENT:
            out.content += self._buffer[:cut]
        self._buffer = self._buffer[cut:]
        return False

    def _close_early(self, out: ToolDelta) -> bool:
        """Settle the segment once its JSON is complete; False while it is not."""
        decoded = _decode(self._buffer)
        if decoded is None:
            return False
        end = decoded[1]
        segment, self._buffer = self._buffer[:end], self._buffer[end:]
        settled = self._segment(segment)
        out += settled
        self._mode = _Mode.SKIP if settled.calls else _Mode.CONTENT
        return True

    def _settle(self, text: str) -> ToolDelta:
        """What ``text``, ending the current mode (at a marker or the end), adds."""
        if self._mode is _Mode.CONTENT:
            return ToolDelta(content=text)
        if self._mode is _Mode.SKIP:
            return ToolDelta()
        return self._segment(text)

    def _segment(self, segment: str) -> ToolDelta:
        calls = parse_segment(segment)
        if calls is None:
            return ToolDelta(content=MARKER + segment)
        self._index += len(calls)
        first = self._index - len(calls)
        return ToolDelta(calls=[call.as_delta(first + i) for i, call in enumerate(calls)])
