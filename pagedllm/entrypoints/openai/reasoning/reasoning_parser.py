"""ReasoningParser: the interface that splits generated text into reasoning and content."""

from __future__ import annotations

from abc import ABC, abstractmethod


class ReasoningParser(ABC):
    """Splits generated text into the `reasoning_content` and `content` the server returns.

    Non-streaming: call the class method `extract` on the whole generated text.
    Streaming: create one instance per choice, `feed` each newly generated piece of text in
    order, then call `finish` once to flush what was held back.

    Invariant (unless a subclass documents an exception): for every text and every way of
    splitting it into deltas, the concatenation of the streamed reasoning deltas (resp. content
    deltas) equals what `extract` returns for the whole text, reading None as "".
    """

    @abstractmethod
    def __init__(self, prompt_opened_think: bool) -> None:
        """`prompt_opened_think`: the rendered prompt left a reasoning block open (see
        `prompt_opens_think`), so the output starts inside it."""

    @staticmethod
    @abstractmethod
    def prompt_opens_think(prompt: str) -> bool:
        """True when the rendered prompt leaves a reasoning block open for the model to fill."""

    @classmethod
    @abstractmethod
    def extract(cls, model_output: str, prompt_opened_think: bool) -> tuple[str | None, str | None]:
        """(reasoning_content, content) of a whole output; an empty part is None."""

    @abstractmethod
    def feed(self, delta_text: str) -> tuple[str, str]:
        """(reasoning_delta, content_delta) for the next piece of generated text; either may be
        "" (text that might begin a tag is held back until the following pieces decide it)."""

    @abstractmethod
    def finish(self) -> tuple[str, str]:
        """(reasoning_delta, content_delta) flushing what `feed` held back; call at stream end."""
