"""Qwen3 reasoning parser: what the model thinks before `</think>` is reasoning, the rest content.

Qwen3 thinking models write `<think>…</think>` and then the answer; newer thinking templates
(Qwen3-*-Thinking-2507) end the prompt with `<think>\\n`, so the output holds only the close
tag; with `enable_thinking=False` the template ends the prompt with an empty block,
`<think>\\n\\n</think>\\n\\n`, and the output is the answer alone.

Rules, as vLLM 0.26's `qwen3` parser (a state machine that starts in reasoning unless the
request sets `enable_thinking` to false; tags are matched as text, leftmost first):

- Thinking off, i.e. the prompt ends with a closed block (`prompt_opens_think` is False): the
  whole output is content, verbatim, tags included.
- Thinking on (any other prompt, whether or not it opened `<think>`): the output starts in
  reasoning. There `<think>` is dropped (the model's own opening tag), and the first
  `</think>` or `<tool_call>` ends the reasoning: `</think>` is dropped, `<tool_call>` (a model
  may call a tool without closing its thoughts) begins the content, for the tool parser.
- Everything after the end of the reasoning is content, verbatim. Nothing is stripped; empty
  parts are None.

Consequences: an output without tags is all reasoning when thinking is on (vLLM 0.26 does
so: the `deepseek_r1` parser here makes it content instead); an output cut inside the block is
all reasoning; "<think>\\nabc\\n</think>\\n\\nHi" -> ("\\nabc\\n", "\\n\\nHi").

Where vLLM 0.26 differs: its non-streaming path also drops a second `</think>` found in the
content, while its streaming path keeps it; here both keep it.

Streaming equals non-streaming for every split of the text into deltas, with no exception.
Text that may begin a tag is held back only while in reasoning.
"""

from __future__ import annotations

from pagedllm.entrypoints.openai.reasoning.deepseek_r1 import THINK_END, THINK_START
from pagedllm.entrypoints.openai.reasoning.reasoning_parser import ReasoningParser

TOOL_CALL_START = "<tool_call>"
_TAGS = (THINK_START, THINK_END, TOOL_CALL_START)


def _reasoning_end(text: str) -> tuple[int, int] | None:
    """(where the reasoning ends, where the content starts) at the first `</think>` or
    `<tool_call>` of `text`, or None. The tags hold "<" only at their start, so they never
    overlap and the first found is the first written."""
    close = text.find(THINK_END)
    call = text.find(TOOL_CALL_START)
    if call >= 0 and (close < 0 or call < close):
        return call, call
    if close >= 0:
        return close, close + len(THINK_END)
    return None


def _split(text: str) -> tuple[str, str, bool]:
    """(reasoning, content, reasoning ended) of `text` read from inside the reasoning."""
    end = _reasoning_end(text)
    if end is None:
        return text.replace(THINK_START, ""), "", False
    at, resume = end
    return text[:at].replace(THINK_START, ""), text[resume:], True


def _partial_tag_len(text: str) -> int:
    """Length of the end of `text` that is a proper prefix of a tag (0 if none); at most one
    end qualifies, since "<" starts every tag and appears nowhere else in them."""
    for n in range(min(len(text), max(map(len, _TAGS)) - 1), 0, -1):
        suffix = text[-n:]
        if any(len(tag) > n and tag.startswith(suffix) for tag in _TAGS):
            return n
    return 0


class Qwen3ReasoningParser(ReasoningParser):
    """Qwen3's reasoning parser; see the module docstring for the exact rules."""

    def __init__(self, prompt_opened_think: bool) -> None:
        self._in_reasoning = prompt_opened_think
        # Invariant: empty unless in reasoning, then a proper prefix of a tag, not yet routed.
        self._pending = ""

    @staticmethod
    def prompt_opens_think(prompt: str) -> bool:
        """False when `prompt` ends with `</think>` (then blanks): the template closed the block
        itself, as Qwen3's does for `enable_thinking=False`. True otherwise: a thinking model
        reasons first, whether the template opened `<think>` or leaves that to the model."""
        return not prompt.rstrip().endswith(THINK_END)

    @classmethod
    def extract(cls, model_output: str, prompt_opened_think: bool) -> tuple[str | None, str | None]:
        if not prompt_opened_think:
            return None, model_output or None
        reasoning, content, _ = _split(model_output)
        return reasoning or None, content or None

    def feed(self, delta_text: str) -> tuple[str, str]:
        text, self._pending = self._pending + delta_text, ""
        if self._in_reasoning and _reasoning_end(text) is None:
            ready = len(text) - _partial_tag_len(text)
            text, self._pending = text[:ready], text[ready:]
        return self._route(text)

    def finish(self) -> tuple[str, str]:
        text, self._pending = self._pending, ""
        return self._route(text)

    def _route(self, text: str) -> tuple[str, str]:
        if not self._in_reasoning:
            return "", text
        reasoning, content, ended = _split(text)
        self._in_reasoning = not ended
        return reasoning, content
