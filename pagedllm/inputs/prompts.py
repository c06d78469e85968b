"""The prompt shapes ``LLM.generate`` and ``AsyncLLM.generate`` take, under vLLM's names:
``from pagedllm.inputs import TokensPrompt`` works as ``from vllm.inputs import
TokensPrompt`` does. They are plain dicts at run time; ``InputProcessor`` checks them and
refuses the keys vLLM defines that pagedllm does not serve (multi-modal data, embeddings).
"""

from __future__ import annotations

from typing import Any, TypedDict

# Characters of a prompt's cache_salt (or a request's prompt_cache_key): the salt is hashed
# into every block's hash, on the engine core that serves everyone.
MAX_CACHE_SALT = 1024


def truncate_prompt(ids: list[int], keep: int | None, max_model_len: int) -> list[int]:
    """vLLM's ``truncate_prompt_tokens``: the prompt's last ``keep`` tokens (-1: the last
    ``max_model_len``), the servers apply it before fitting ``max_tokens``
    to the room left, the input processor to every prompt. A ``keep`` past the context
    is refused naming the field, as vLLM does (it could keep nothing the model can take)."""
    if keep is None:
        return ids
    if keep > max_model_len:
        raise ValueError(
            f"truncate_prompt_tokens must be at most the model's context length "
            f"({max_model_len}), or -1 for it, got {keep}."
        )
    keep = max_model_len if keep == -1 else keep
    return ids[-keep:] if len(ids) > keep else ids


class _PromptOptions(TypedDict, total=False):
    cache_salt: str  # prefix-cache isolation: only prompts with equal salts share blocks


class TextPrompt(_PromptOptions):
    """Text, tokenized by the engine."""

    prompt: str


class _TokensOptions(_PromptOptions, total=False):
    prompt: str  # the text the ids came from, if known (echoed in outputs)


class TokensPrompt(_TokensOptions):
    """Token ids, passed to the model as they are."""

    prompt_token_ids: list[int]


PromptType = str | TextPrompt | TokensPrompt | dict[str, Any]
