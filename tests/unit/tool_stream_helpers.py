"""Shared by the tool-parser tests: a stream's output merged as a client merges it, and
random ways to cut a text into deltas."""

from __future__ import annotations

import random

from pagedllm.entrypoints.openai.tool_parsers import ToolDelta, ToolStream


def streamed_calls(stream: ToolStream, pieces: list[str]) -> tuple[str, list[dict]]:
    """Concatenated content and the calls (pieces merged per index, as an OpenAI client
    does) of a streamed text; checks each call's id comes once and indices count from 0."""
    total = ToolDelta()
    for piece in pieces:
        total += stream.feed(piece)
    total += stream.finish()
    calls: dict[int, dict] = {}
    for delta in total.calls:
        call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
        if delta.id is not None:
            assert call["id"] is None, "a call's id is sent once"
            call["id"], call["name"] = delta.id, delta.name
        call["arguments"] += delta.arguments
    assert sorted(calls) == list(range(len(calls))), "indices count up from 0"
    return total.content, [calls[i] for i in sorted(calls)]


def random_pieces(
    text: str, rng: random.Random, max_cuts: int = 15, empty: bool = False
) -> list[str]:
    """``text`` cut at up to ``max_cuts`` random places; ``empty``: cuts may repeat, so
    empty pieces come too (a delta may be empty)."""
    if empty:
        cuts = sorted(rng.choices(range(len(text) + 1), k=rng.randint(0, max_cuts)))
    else:
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text), rng.randint(0, max_cuts))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
