"""Logprobs from the engine core (flat lists) into vLLM's output shape: one dict per
position, token id -> Logprob(logprob, rank, decoded_token), the chosen token first."""

from __future__ import annotations

from collections.abc import Callable

from pagedllm.core.scheduler_output import LogprobsLists
from pagedllm.outputs import Logprob, PromptLogprobs, SampleLogprobs

# Token id -> its text (vLLM's ``decoded_token``); None when there is no text to give.
TokenDecoder = Callable[[int], "str | None"] | None


def position_dicts(lists: LogprobsLists, decode: TokenDecoder) -> list[dict[int, Logprob]]:
    """Row r of ``lists``: the chosen token (with its rank), then the top-k (ranks 1..k).
    A token already in the dict keeps its first entry. Runs for every generated token of
    every request that asked for logprobs: kept to plain loops over the lists."""
    positions = []
    for ids, lps, rank in zip(lists.token_ids, lists.logprobs, lists.ranks):
        chosen = ids[0]
        entry = {chosen: Logprob(lps[0], rank, decode(chosen) if decode else None)}
        for k in range(1, len(ids)):
            if ids[k] not in entry:
                entry[ids[k]] = Logprob(lps[k], k, decode(ids[k]) if decode else None)
        positions.append(entry)
    return positions


class LogprobsAccumulator:
    """One sequence's logprobs so far. ``cumulative`` sums the chosen tokens' logprobs; it
    is kept when logprobs were asked for, or for best_of ranking."""

    def __init__(
        self,
        num_logprobs: int | None,
        num_prompt_logprobs: int | None,
        keep_cumulative: bool,
        decode: TokenDecoder,
    ) -> None:
        self.decode = decode
        self.logprobs: SampleLogprobs | None = [] if num_logprobs is not None else None
        # Position 0 has no logprob: nothing precedes the first prompt token.
        self.prompt_logprobs: PromptLogprobs | None = (
            [None] if num_prompt_logprobs is not None else None
        )
        keep = keep_cumulative or num_logprobs is not None
        self.cumulative: float | None = 0.0 if keep else None

    def add_sample(self, lists: LogprobsLists | None) -> None:
        if lists is None:
            return
        if self.cumulative is not None:
            self.cumulative += sum(row[0] for row in lists.logprobs)
        if self.logprobs is not None:
            self.logprobs += position_dicts(lists, self.decode)

    def add_prompt(self, lists: LogprobsLists | None) -> None:
        if lists is not None and self.prompt_logprobs is not None:
            self.prompt_logprobs += position_dicts(lists, self.decode)
