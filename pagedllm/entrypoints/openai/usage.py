"""Token accounting of a response (``usage``)."""

from __future__ import annotations

from collections.abc import Sequence

from pagedllm.beam_search import BeamSearchOutput
from pagedllm.entrypoints.openai.protocol import PromptTokensDetails, UsageInfo
from pagedllm.outputs import CompletionOutput, RequestOutput


def usage_of(
    output: RequestOutput,
    completions: Sequence[CompletionOutput] | None,
    completion_tokens: int | None = None,
    details: bool = False,
) -> UsageInfo:
    """Usage of one request: its prompt, and the tokens of ``completions`` (or a count).
    ``details`` (``--enable-prompt-tokens-details``, vLLM's flag and default off): the
    prompt's cached tokens too, which tell any client whether a prompt it guesses is in the
    prefix cache (unless requests are salted)."""
    prompt_tokens = len(output.prompt_token_ids or [])
    if completion_tokens is None:
        completion_tokens = sum(len(c.token_ids) for c in completions or [])
    cached = PromptTokensDetails(cached_tokens=output.num_cached_tokens or 0) if details else None
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=cached,
    )


def add_usage(parts: Sequence[UsageInfo]) -> UsageInfo:
    """Usage of several prompts answered in one response (completions with a list prompt)."""
    prompt = sum(u.prompt_tokens for u in parts)
    completion = sum(u.completion_tokens for u in parts)
    details = [u.prompt_tokens_details for u in parts if u.prompt_tokens_details is not None]
    cached = PromptTokensDetails(cached_tokens=sum(d.cached_tokens for d in details))
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=cached if details else None,
    )


def clamp_max_tokens(requested: int | None, prompt_len: int, max_model_len: int) -> int | None:
    """max_tokens limited to the room the context has left, as vLLM's server does (the
    choice then ends with finish_reason "length"). None when the prompt leaves no room, so
    the engine refuses it with the numbers."""
    room = max_model_len - prompt_len
    if room <= 0:
        return None
    return room if requested is None else min(requested, room)


def beam_usage(prompt_tokens: int, result: BeamSearchOutput) -> UsageInfo:
    completion = sum(len(beam.generated) for beam in result.sequences)
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
    )
