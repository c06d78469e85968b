"""Reasoning parsers for `--reasoning-parser`: split generated text into reasoning and content.

Usage: `parser_cls = get_reasoning_parser(name)`; non-streaming
`parser_cls.extract(text, prompt_opened_think)`; streaming, per choice,
`parser = parser_cls(prompt_opened_think)`, `parser.feed(delta)` ..., `parser.finish()`;
with `prompt_opened_think = parser_cls.prompt_opens_think(rendered_prompt)`.
"""

from __future__ import annotations

from pagedllm.entrypoints.openai.reasoning.deepseek_r1 import DeepSeekR1ReasoningParser
from pagedllm.entrypoints.openai.reasoning.qwen3 import Qwen3ReasoningParser
from pagedllm.entrypoints.openai.reasoning.reasoning_parser import ReasoningParser

_PARSERS: dict[str, type[ReasoningParser]] = {
    "deepseek_r1": DeepSeekR1ReasoningParser,
    "qwen3": Qwen3ReasoningParser,
}

REASONING_PARSER_NAMES: tuple[str, ...] = tuple(sorted(_PARSERS))


def get_reasoning_parser(name: str) -> type[ReasoningParser]:
    """The parser class registered as `name`; ValueError naming the supported ones otherwise."""
    try:
        return _PARSERS[name]
    except KeyError:
        supported = ", ".join(REASONING_PARSER_NAMES)
        raise ValueError(
            f"Unknown reasoning parser {name!r} (--reasoning-parser); supported: {supported}."
        ) from None


__all__ = [
    "REASONING_PARSER_NAMES",
    "DeepSeekR1ReasoningParser",
    "Qwen3ReasoningParser",
    "ReasoningParser",
    "get_reasoning_parser",
]
