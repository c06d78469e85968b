"""Tool-call parsers for ``--tool-call-parser``: find the calls in generated text.

Usage: ``parser_cls = get_tool_parser(name)``; non-streaming ``parser_cls.extract(text)``;
streaming, per choice, ``stream = parser_cls.stream()``, ``stream.feed(delta)`` ...,
``stream.finish()``.
"""

from __future__ import annotations

from pagedllm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from pagedllm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from pagedllm.entrypoints.openai.tool_parsers.mistral import MistralToolParser
from pagedllm.entrypoints.openai.tool_parsers.pythonic import PythonicToolParser
from pagedllm.entrypoints.openai.tool_parsers.tool_parser import (
    ExtractedToolCalls,
    ToolCall,
    ToolCallDelta,
    ToolDelta,
    ToolParser,
    ToolStream,
)

_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
}

TOOL_PARSER_NAMES: tuple[str, ...] = tuple(sorted(_PARSERS))


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser registered as ``name``; ValueError naming the supported ones otherwise."""
    try:
        return _PARSERS[name]
    except KeyError:
        supported = ", ".join(TOOL_PARSER_NAMES)
        raise ValueError(
            f"Unknown tool call parser {name!r} (--tool-call-parser); supported: {supported}."
        ) from None


__all__ = [
    "TOOL_PARSER_NAMES",
    "ExtractedToolCalls",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "PythonicToolParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolDelta",
    "ToolParser",
    "ToolStream",
    "get_tool_parser",
]
