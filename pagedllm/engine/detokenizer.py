"""Incremental detokenization and stop strings.

Text is produced with the tokenizers library's ``DecodeStream``, which holds back bytes
until they form whole UTF-8 characters, so streamed Chinese text never shows a broken
character. The stream is primed with the prompt's last tokens so the first generated
token decodes as it would inside the full text (leading spaces included).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers.decoders import DecodeStream

from pagedllm.sampling_params import SamplingParams

_PRIME_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._skip_special = params.skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=self._skip_special)
        for token_id in prompt_token_ids[-_PRIME_TOKENS:]:
            self._step(token_id)
        # spaces_between_special_tokens=False (vLLM's meaning): consecutive added tokens are
        # emitted as their raw content, without the space a decoder may put before them.
        self._raw_added: dict[int, str] | None = None
        if not params.skip_special_tokens and not params.spaces_between_special_tokens:
            self._raw_added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self._last_added = False

    def decode(self, token_ids: Iterable[int]) -> str:
        """Text for newly generated tokens (possibly empty while a character is incomplete)."""
        return "".join(self._next(t) for t in token_ids)

    def _next(self, token_id: int) -> str:
        text = self._step(token_id)
        if self._raw_added is not None:
            raw = self._raw_added.get(token_id)
            if raw is not None and self._last_added:
                text = raw
            self._last_added = raw is not None
        return text

    def _step(self, token_id: int) -> str:
        try:
            return self._stream.step(self._backend, token_id) or ""
        except Exception:
            # An id the tokenizer cannot decode (e.g. beyond its vocabulary in a model with
            # a padded embedding) yields no text rather than failing the request; restart
            # the stream so later tokens decode.
            self._stream = DecodeStream(skip_special_tokens=self._skip_special)
            return ""


def find_stop_string(
    text: str, new_chars: int, stops: list[str], include_stop: bool
) -> tuple[str, int] | None:
    """First stop string (in ``stops`` order) that ends inside the last ``new_chars`` chars.

    Returns the stop string and the length to cut the text to.
    """
    for stop in stops:
        start = max(0, len(text) - new_chars - len(stop) + 1)
        index = text.find(stop, start)
        if index != -1:
            return stop, index + len(stop) if include_stop else index
    return None
