"""Tokenizer loading, from the model's own files or a tokenizer named apart (a directory,
or a repo id whose tokenizer files are fetched as the model's are)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pagedllm.config import ModelConfig
from pagedllm.model_files import resolve_tokenizer

AnyTokenizer = Any  # transformers.PreTrainedTokenizerBase

# A token covers at most its vocabulary entry's length in characters of normalized text
# (byte-level entries are a character per byte); a normalizer may compose a few characters
# of the input into one, hence the margin.
_NORMALIZATION_MARGIN = 4
_NO_VOCABULARY_LIMIT = 64 << 20


def prompt_char_limit(tokenizer: AnyTokenizer, max_model_len: int) -> int:
    """The most characters ``max_model_len`` tokens could cover. Text past it cannot fit
    the context and tokenizing it only costs: 60 MB of prompt took 8.6 GB and 86 s of the
    API server before its 400, and a 40-byte chat template rendered 48 MB."""
    vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
    if not vocabulary:  # a tokenizer of the user's own, without one: the body's bound only
        return _NO_VOCABULARY_LIMIT
    longest = max(len(piece) for piece in vocabulary)
    return max_model_len * longest * _NORMALIZATION_MARGIN


def bounded_text(text: str, max_chars: int, keep_tail: bool) -> str:
    """``text`` if within ``max_chars`` (``prompt_char_limit``); else its last ``max_chars``
    characters with ``keep_tail`` (a prompt to be truncated to its last tokens: they all
    lie there), else ValueError."""
    if len(text) <= max_chars:
        return text
    if keep_tail:
        return text[-max_chars:]
    raise ValueError(
        f"The prompt is {len(text)} characters, more than the model's context could hold "
        f"(at most {max_chars} for its maximum model length)."
    )


# Text of more UTF-8 bytes than this per token of the context is counted in parts before
# it is tokenized whole. A token spells at least a byte, so text tokenized whole makes at
# most 8x the context's tokens; real prompts average 2-5 bytes a token.
_COUNT_FIRST_BYTES_PER_TOKEN = 8
# Counted past this many times the context, text cannot fit it whole (a chunk's edges move
# its count by a few tokens, not by the context's length).
_COUNTED_PAST_FACTOR = 2


@dataclass(frozen=True)
class TextBounds:
    """What a text prompt may be: at most ``max_chars`` characters (``prompt_char_limit``)
    and, as far as counting in chunks can tell, at most ``max_tokens`` tokens."""

    max_chars: int
    max_tokens: int


class Encoded(NamedTuple):
    ids: list[int]
    cut: bool  # the text was cut to its tail first: the ids no longer spell all of it


def encode_bounded(
    tokenizer: AnyTokenizer,
    text: str,
    add_special_tokens: bool,
    bounds: TextBounds,
    keep_tail: bool = False,
) -> Encoded:
    """``tokenizer.encode``, its memory bounded by the context. Characters are bounded
    first (``bounded_text``); text of more than 8 UTF-8 bytes per context token is then
    counted a chunk of ``max_tokens`` characters at a time (one chunk's encoding held at
    once), and past twice the context refused, or with ``keep_tail`` cut where its tail
    holds that many. Text that spells 3-4 tokens a character (byte fallback) otherwise
    made ~8 million tokens of a 2.6 million-character prompt, 1.8 GB of the front end's
    memory each, before its 400; text tokenized whole now makes at most 8x the context's
    tokens."""
    kept = bounded_text(text, bounds.max_chars, keep_tail)
    if _utf8_length(kept) > _COUNT_FIRST_BYTES_PER_TOKEN * bounds.max_tokens:
        kept = _counted_text(tokenizer, kept, bounds.max_tokens, keep_tail)
    ids = tokenizer.encode(kept, add_special_tokens=add_special_tokens)
    return Encoded(ids, len(kept) != len(text))


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _counted_text(tokenizer: AnyTokenizer, text: str, max_tokens: int, keep_tail: bool) -> str:
    chunk, counted = max_tokens, 0
    limit = _COUNTED_PAST_FACTOR * max_tokens
    starts = range(0, len(text), chunk)
    for start in reversed(starts) if keep_tail else starts:
        counted += len(tokenizer.encode(text[start : start + chunk], add_special_tokens=False))
        if counted > limit:
            if keep_tail:
                return text[start:]
            raise ValueError(
                f"The prompt is more than {limit} tokens, longer than the maximum model "
                f"length of {max_tokens} (counted in parts of {chunk} characters)."
            )
    return text


def limit_tokenizer_threads(device: str) -> None:
    """On the CPU the model's threads take the cores; a tokenizer pool of as many threads
    (Rust's rayon, one per CPU) would contend with them on every batch it encodes. Set in
    each process that tokenizes (the front end, the engine core), before its first use."""
    if device == "cpu":
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_tokenizer(model_config: ModelConfig) -> AnyTokenizer | None:
    """The model's tokenizer, or None with ``skip_tokenizer_init``."""
    if model_config.skip_tokenizer_init:
        return None
    from transformers import AutoTokenizer

    source = _tokenizer_dir(model_config)
    try:
        return AutoTokenizer.from_pretrained(
            str(source), trust_remote_code=model_config.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"Could not load a tokenizer from {source}: {exc}. Point `tokenizer` at a "
            "directory with tokenizer files, or pass skip_tokenizer_init=True and give "
            'prompts as token ids ({"prompt_token_ids": [...]}).'
        ) from exc


def _tokenizer_dir(model_config: ModelConfig) -> Path:
    revision = model_config.tokenizer_revision or model_config.revision
    if model_config.tokenizer is None and revision == model_config.revision:
        files = model_config.files
        if not files.has_tokenizer():
            raise ValueError(
                f"{files.config_dir} has no tokenizer files. Pass tokenizer=<dir or repo id>, "
                "or skip_tokenizer_init=True and give prompts as token ids."
            )
        return files.config_dir
    # As vLLM: the tokenizer defaults to the model's repo, its revision to the model's.
    name = model_config.tokenizer or model_config.model
    if model_config.tokenizer_revision is not None and Path(name).expanduser().exists():
        raise ValueError(
            f"tokenizer_revision={model_config.tokenizer_revision!r} picks a revision of a "
            f"repository, but the tokenizer {name!r} is a local path; drop one of them."
        )
    return resolve_tokenizer(name, revision, model_config.download_dir)
