"""Tool calls found in generated text, and the interface of the parsers that find them."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


def tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class ToolCall:
    """One call: the function's name and its arguments as JSON text."""

    name: str
    arguments: str
    id: str = field(default_factory=tool_call_id)

    def as_json(self) -> dict[str, Any]:
        """OpenAI's ``message.tool_calls[i]``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def as_delta(self, index: int) -> ToolCallDelta:
        return ToolCallDelta(index, self.arguments, self.id, self.name)


@dataclass
class ToolCallDelta:
    """A piece of the ``index``-th call in a stream: the first piece of a call carries its
    id and name, every piece some of its arguments text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def as_json(self) -> dict[str, Any]:
        """OpenAI's ``delta.tool_calls[i]``."""
        body: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {}
        if self.id is not None:
            body["id"], body["type"] = self.id, "function"
        if self.name is not None:
            function["name"] = self.name
        function["arguments"] = self.arguments
        body["function"] = function
        return body


@dataclass
class ToolDelta:
    """What a piece of generated text adds: plain content and/or tool-call pieces."""

    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)

    def __iadd__(self, other: ToolDelta) -> ToolDelta:
        self.content += other.content
        self.calls.extend(other.calls)
        return self


@dataclass
class ExtractedToolCalls:
    content: str | None
    calls: list[ToolCall]


class ToolStream(ABC):
    """Per choice, in a stream: ``feed`` each new piece of text, then ``finish`` once.

    Invariant: for well-formed output, the content and calls streamed for a text equal what
    the non-streaming extraction returns for it (whitespace-only content aside, which
    extraction drops). A malformed call is passed on as content in both.
    """

    @abstractmethod
    def feed(self, text: str) -> ToolDelta: ...

    @abstractmethod
    def finish(self) -> ToolDelta: ...


class ToolParser(ABC):
    """A model family's tool-call format (``--tool-call-parser NAME``)."""

    # True when the format's marker is a special token (Mistral's ``[TOOL_CALLS]``): the
    # server then detokenizes with skip_special_tokens=False while tools may be called, as
    # vLLM does, or the marker would never reach the parser.
    needs_special_tokens: bool = False

    @classmethod
    @abstractmethod
    def extract(cls, text: str) -> ExtractedToolCalls:
        """The calls in a whole output, and the content around them (None when blank). A
        call that does not parse leaves the whole text as content."""

    @classmethod
    @abstractmethod
    def stream(cls) -> ToolStream: ...
