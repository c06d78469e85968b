"""Logits processors that reshape the distribution before penalties and sampling:
allowed token ids, banned ids (min_tokens, bad words), logit bias, user callables."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from pagedllm.sample.metadata import SamplingMetadata


def apply_allowed(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    if md.allowed is not None:
        logits = logits.masked_fill(~md.allowed, float("-inf"))
    return logits


def apply_banned(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    if md.banned is not None:
        rows, cols = md.banned
        logits[rows, cols] = float("-inf")
    return logits


def apply_bias(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    if md.bias is not None:
        rows, cols, values = md.bias
        logits.index_put_((rows, cols), values, accumulate=True)
    return logits


def apply_user_processors(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """vLLM's per-request callables: ``fn(output_ids, logits)`` or
    ``fn(prompt_ids, output_ids, logits)``, one row at a time (offline API only)."""
    for row, fn, prompt_ids, output_ids in md.processors or ():
        if takes_prompt(fn):
            logits[row] = fn(prompt_ids, output_ids, logits[row])
        else:
            logits[row] = fn(output_ids, logits[row])
    return logits


def takes_prompt(fn: Callable[..., torch.Tensor]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def bad_word_bans(bad_words: list[list[int]], output_ids: list[int]) -> list[int]:
    """Tokens to ban next: a word's last token, where its earlier tokens were just generated."""
    banned = []
    for word in bad_words:
        prefix = word[:-1]
        if not prefix or output_ids[-len(prefix) :] == prefix:
            banned.append(word[-1])
    return banned
