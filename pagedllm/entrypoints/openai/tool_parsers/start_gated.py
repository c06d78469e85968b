"""Tool-call formats where an output that calls tools starts with a marker (past leading
whitespace) and is nothing but calls: Llama 3's JSON (``{`` or ``<|python_tag|>``) and the
pythonic list (``[``). A parser of this kind names its markers and how to read the calls;
extraction and streaming follow from that."""

from __future__ import annotations

from abc import abstractmethod

from pagedllm.entrypoints.openai.tool_parsers.tool_parser import (
    ExtractedToolCalls,
    ToolCall,
    ToolDelta,
    ToolParser,
    ToolStream,
)


def starts_like_call(text: str, starts: tuple[str, ...]) -> bool:
    """Whether ``text``, past leading whitespace, begins with one of ``starts``."""
    return text.lstrip().startswith(starts)


class StartGatedParser(ToolParser):
    starts: tuple[str, ...]

    @staticmethod
    @abstractmethod
    def parse_calls(text: str) -> list[ToolCall]:
        """The calls that make up all of ``text``; none when it is not only calls."""

    @classmethod
    def extract(cls, text: str) -> ExtractedToolCalls:
        calls = cls.parse_calls(text) if starts_like_call(text, cls.starts) else []
        return ExtractedToolCalls(None, calls) if calls else ExtractedToolCalls(text, [])

    @classmethod
    def stream(cls) -> ToolStream:
        return StartGatedStream(cls, cls.starts)


class StartGatedStream(ToolStream):
    """For formats where a call output starts with a marker (past leading whitespace) and is
    nothing but calls: decide from the first non-blank characters. Content passes through as
    it comes (leading whitespace, or a partial marker, is held until the decision); a call
    output is held whole and given to ``parser.extract`` at ``finish``, so the stream equals
    the extraction for any split, malformed outputs included (they come as content then).
    The cost: calls arrive only in the last delta."""

    def __init__(self, parser: type[ToolParser], starts: tuple[str, ...]) -> None:
        self._parser = parser
        self._starts = starts
        self._held = ""
        self._calls: bool | None = None  # None until the start of the output decides

    def feed(self, text: str) -> ToolDelta:
        if self._calls is False:
            return ToolDelta(content=text)
        self._held += text
        if self._calls is None:
            self._calls = self._decide(self._held.lstrip())
            if self._calls is False:
                held, self._held = self._held, ""
                return ToolDelta(content=held)
        return ToolDelta()

    def finish(self) -> ToolDelta:
        held, self._held = self._held, ""
        if not self._calls:
            return ToolDelta(content=held)
        found = self._parser.extract(held)
        calls = [call.as_delta(index) for index, call in enumerate(found.calls)]
        return ToolDelta(content=found.content or "", calls=calls)

    def _decide(self, start: str) -> bool | None:
        """True / False once ``start`` (the output so far, past leading whitespace) shows
        whether it is a call output; None while it is blank or a part of a marker."""
        if start.startswith(self._starts):
            return True
        if any(marker.startswith(start) for marker in self._starts):  # "" included
            return None
        return False
