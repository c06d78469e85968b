"""Shared by the reasoning-parser tests."""

from __future__ import annotations

from pagedllm.entrypoints.openai.reasoning import ReasoningParser


def stream_through(
    parser_cls: type[ReasoningParser], pieces: list[str], prompt_opened_think: bool
) -> tuple[str, str]:
    """Concatenated (reasoning, content) of feeding `pieces` in order, then finish()."""
    parser = parser_cls(prompt_opened_think)
    reasoning, content = [], []
    for delta_reasoning, delta_content in [*map(parser.feed, pieces), parser.finish()]:
        reasoning.append(delta_reasoning)
        content.append(delta_content)
    return "".join(reasoning), "".join(content)
