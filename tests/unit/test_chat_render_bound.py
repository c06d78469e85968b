"""Messages whose text cannot fit the context are refused before the template renders
them (a 63 MB body cost ~1 s of the server's CPU to render before its 400), unless the
prompt is to be cut to its last tokens."""

from __future__ import annotations

import asyncio

import pytest

from pagedllm.entrypoints.openai import chat_renderer
from pagedllm.entrypoints.openai.chat_renderer import ChatRenderer, text_chars
from pagedllm.inputs.tokenizer import TextBounds


class RecordingSandbox:
    def __init__(self) -> None:
        self.rendered = 0

    async def render(self, job: object) -> str:
        self.rendered += 1
        return "rendered"


def renderer(sandbox: RecordingSandbox) -> ChatRenderer:
    bounds = TextBounds(max_chars=1000, max_tokens=100)
    return ChatRenderer(None, None, sandbox, False, None, bounds)  # type: ignore[arg-type]


def render(r: ChatRenderer, messages: list, tools: list | None = None, **kw) -> str:
    return asyncio.run(r.render(messages, None, True, False, tools, None, **kw))


@pytest.fixture(autouse=True)
def no_template(monkeypatch) -> None:
    monkeypatch.setattr(chat_renderer, "prepare_chat", lambda *a, **kw: "job")


def test_messages_past_twice_the_bound_are_refused_unrendered() -> None:
    sandbox = RecordingSandbox()
    long = [{"role": "user", "content": [{"type": "text", "text": "x" * 2100}]}]
    with pytest.raises(ValueError, match="more than 2000 characters of text"):
        render(renderer(sandbox), long)
    with pytest.raises(ValueError, match="100-token context"):
        render(renderer(sandbox), [{"role": "user", "content": "hi"}], [{"d": "y" * 2100}])
    assert sandbox.rendered == 0


def test_messages_within_the_bound_or_kept_by_their_tail_are_rendered() -> None:
    sandbox = RecordingSandbox()
    r = renderer(sandbox)
    assert render(r, [{"role": "user", "content": "x" * 1900}]) == "rendered"
    assert render(r, [{"role": "user", "content": "x" * 5000}], keep_tail=True) == "rendered"
    assert sandbox.rendered == 2


def test_text_chars_counts_strings_keys_included_and_stops_early() -> None:
    assert text_chars([{"ab": "cde", "f": [1, "gh"]}], 100) == 8
    assert text_chars(["x" * 50] * 1000, 100) <= 150
