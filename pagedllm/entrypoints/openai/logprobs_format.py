"""Logprobs in OpenAI's response shapes (chat: ``{"content": [...]}``; completions:
``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``), and vLLM's
``prompt_logprobs`` field. -inf is sent as -9999.0 (JSON has no infinity)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pagedllm.outputs import Logprob, PromptLogprobs, SampleLogprobs

_FLOOR = -9999.0


def _lp(value: float) -> float:
    return max(value, _FLOOR)


def _token_text(token_id: int, logprob: Logprob, as_ids: bool = False) -> str:
    """The token's text, or ``token_id:N`` (``as_ids``: vLLM's return_tokens_as_token_ids,
    for tokens that are not whole characters alone; or no text decoded)."""
    if as_ids or logprob.decoded_token is None:
        return f"token_id:{token_id}"
    return logprob.decoded_token


def chat_logprobs(
    token_ids: list[int], logprobs: SampleLogprobs | None, top: int, as_ids: bool = False
) -> dict[str, Any] | None:
    """``choice.logprobs`` of a chat completion: one entry per generated token (``as_ids``:
    each token written ``token_id:N``)."""
    if logprobs is None:
        return None
    content = []
    for token_id, position in zip(token_ids, logprobs):
        chosen = position[token_id]
        text = _token_text(token_id, chosen, as_ids)
        alternatives = sorted(position.items(), key=lambda kv: kv[1].rank or 0)
        content.append(
            {
                "token": text,
                "logprob": _lp(chosen.logprob),
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {
                        "token": _token_text(t, lp, as_ids),
                        "logprob": _lp(lp.logprob),
                        "bytes": list(_token_text(t, lp, as_ids).encode("utf-8")),
                    }
                    for t, lp in alternatives
                    if lp.rank is not None and lp.rank <= top
                ][:top],
            }
        )
    return {"content": content, "refusal": None}


def completion_logprobs(
    token_ids: list[int],
    logprobs: list[dict[int, Logprob] | None],
    top: int,
    decode: Callable[[int], str],
    text_start: int = 0,
    as_ids: bool = False,
) -> dict[str, Any]:
    """``choice.logprobs`` of a text completion: the chosen token and the ``top`` most likely
    ones per position. A None position (the first prompt token, with ``echo``) has no
    logprob. ``as_ids``: each token written ``token_id:N`` (offsets count those)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = text_start
    for token_id, position in zip(token_ids, logprobs):
        offsets.append(offset)
        if position is None:
            text = f"token_id:{token_id}" if as_ids else decode(token_id)
            token_logprobs.append(None)
            tops.append(None)
        else:
            chosen = position[token_id]
            text = _token_text(token_id, chosen, as_ids)
            token_logprobs.append(_lp(chosen.logprob))
            tops.append(
                {
                    _token_text(t, lp, as_ids): _lp(lp.logprob)
                    for t, lp in position.items()
                    if t == token_id or (lp.rank is not None and lp.rank <= top)
                }
            )
        tokens.append(text)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def prompt_logprobs_json(prompt_logprobs: PromptLogprobs | None) -> list | None:
    """vLLM's ``prompt_logprobs`` response field: per position {token id: {logprob, rank,
    decoded_token}} (None for the first token)."""
    if prompt_logprobs is None:
        return None
    return [
        None
        if position is None
        else {
            str(t): {"logprob": _lp(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
            for t, lp in position.items()
        }
        for position in prompt_logprobs
    ]
