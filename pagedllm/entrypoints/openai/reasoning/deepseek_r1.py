"""DeepSeek-R1 reasoning parser: text inside `<think>…</think>` is reasoning, the rest content.

Rules, applied left to right to the generated text (tags are matched as text, leftmost first;
nothing is stripped, whitespace is kept as generated):

- The output starts in reasoning mode when the prompt opened the block (`prompt_opened_think`,
  as DeepSeek-R1 distill templates do by ending the prompt with `<think>\\n`), else in content
  mode.
- `<think>` enters reasoning mode and `</think>` leaves it; tags are never part of either
  output. A tag that does not change the mode (`<think>` while reasoning, a stray `</think>`
  while in content) is dropped.
- Non-streaming only: when the prompt did not open the block but the first tag of the output
  is `</think>` (a lone close: the block was opened by the template without our knowing), the
  text before it is reasoning too, i.e. the output is read as if it started in reasoning mode.

Consequences: "<think>abc</think>\\n\\ndef" -> ("abc", "\\n\\ndef"); an output cut inside an
unclosed block is all reasoning; an output without tags is all content, or all reasoning when
the prompt opened the block; several blocks concatenate their reasoning; empty parts are None.

Streaming equals non-streaming (concatenated deltas == `extract`, None read as "") for every
split of the text into deltas, with ONE documented exception: the lone-close case above.
Streaming with `prompt_opened_think=False` has already sent the text before that `</think>` as
content and cannot take it back, so it drops the tag and keeps going in content mode, while
`extract` moves that text to reasoning. Pass `prompt_opened_think` (see `prompt_opens_think`)
so this case does not arise with templates that open the block themselves.
"""

from __future__ import annotations

from pagedllm.entrypoints.openai.reasoning.reasoning_parser import ReasoningParser

THINK_START = "<think>"
THINK_END = "</think>"
_TAGS = (THINK_START, THINK_END)


def _next_tag(text: str, start: int) -> tuple[int, str] | None:
    """(index, tag) of the leftmost tag in `text[start:]`, or None.

    The two tags differ at their second character, so no two hits share an index.
    """
    hits = [(index, tag) for tag in _TAGS if (index := text.find(tag, start)) != -1]
    return min(hits) if hits else None


def _split(text: str, in_reasoning: bool) -> tuple[str, str, bool]:
    """Route `text` to (reasoning, content, in_reasoning after it), consuming its tags.

    Whatever `text` ends with is taken as final: a trailing partial tag is plain text.
    """
    reasoning: list[str] = []
    content: list[str] = []
    pos = 0
    while (hit := _next_tag(text, pos)) is not None:
        index, tag = hit
        (reasoning if in_reasoning else content).append(text[pos:index])
        in_reasoning = tag == THINK_START
        pos = index + len(tag)
    (reasoning if in_reasoning else content).append(text[pos:])
    return "".join(reasoning), "".join(content), in_reasoning


def _partial_tag_len(text: str) -> int:
    """Length of the suffix of `text` that is a proper prefix of a tag (0 if none).

    Tags hold "<" only at their start, so at most one suffix qualifies, and it never overlaps
    a complete tag: `text[:-n]` can be split without waiting for more input.
    """
    for n in range(min(len(text), len(THINK_END) - 1), 0, -1):
        suffix = text[-n:]
        if any(len(tag) > n and tag.startswith(suffix) for tag in _TAGS):
            return n
    return 0


def _starts_with_lone_close(text: str) -> bool:
    hit = _next_tag(text, 0)
    return hit is not None and hit[1] == THINK_END


class DeepSeekR1ReasoningParser(ReasoningParser):
    """`<think>…</think>` reasoning parser; see the module docstring for the exact rules."""

    def __init__(self, prompt_opened_think: bool) -> None:
        self._in_reasoning = prompt_opened_think
        # Invariant: a proper prefix of a tag (at most 7 characters), not yet routed.
        self._pending = ""

    @staticmethod
    def prompt_opens_think(prompt: str) -> bool:
        """True when `prompt` ends with `<think>`, optionally followed by whitespace."""
        return prompt.rstrip().endswith(THINK_START)

    @classmethod
    def extract(cls, model_output: str, prompt_opened_think: bool) -> tuple[str | None, str | None]:
        in_reasoning = prompt_opened_think or _starts_with_lone_close(model_output)
        reasoning, content, _ = _split(model_output, in_reasoning)
        return reasoning or None, content or None

    def feed(self, delta_text: str) -> tuple[str, str]:
        text = self._pending + delta_text
        ready = len(text) - _partial_tag_len(text)
        self._pending = text[ready:]
        reasoning, content, self._in_reasoning = _split(text[:ready], self._in_reasoning)
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        text, self._pending = self._pending, ""
        reasoning, content, self._in_reasoning = _split(text, self._in_reasoning)
        return reasoning, content
