"""Per-step sampling inputs, one row per sampled position, built by the model runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class PenaltyInputs:
    """Token history for the penalties, only built when some row uses one."""

    # [rows, vocab], or with ``slots`` [table rows, vocab] read through the slots.
    prompt_mask: torch.Tensor  # bool: token occurs in the prompt
    output_counts: torch.Tensor  # float32: count of the token among generated ones
    presence: torch.Tensor  # [rows]
    frequency: torch.Tensor  # [rows]
    repetition: torch.Tensor  # [rows]
    slots: torch.Tensor | None = None  # [rows] int64: each row's row of the tables


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor  # [rows]; greedy rows hold 1.0 (they take the argmax)
    greedy: torch.Tensor  # [rows] bool
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None  # [rows] int64, vocab size where disabled; None: none uses it
    top_p: torch.Tensor | None  # [rows]; 1.0 where disabled
    min_p: torch.Tensor | None  # [rows]; 0.0 where disabled
    # Rows sampled from their top_k candidates only (top_k <= TOP_K_FAST for a random row,
    # or a greedy row when such rows exist), and the largest such k: torch.topk then
    # replaces a sort over the whole vocabulary. Decided row by row, so a seeded row draws
    # the same random numbers whatever else is in the batch.
    fast_rows: torch.Tensor | None = None
    fast_k: int = 0
    slow_rows: torch.Tensor | None = None
    # The generators of each group, by position within the group (built on the host: no sync).
    group_generators: tuple[dict[int, torch.Generator], dict[int, torch.Generator]] = field(
        default_factory=lambda: ({}, {})
    )
    # row -> the request's own generator (seeded requests); other rows use the global RNG.
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    penalties: PenaltyInputs | None = None
    # (rows, token ids) whose logits are -inf this step: eos/stop ids before min_tokens, and
    # the last token of a bad word whose preceding tokens were just generated.
    banned: tuple[torch.Tensor, torch.Tensor] | None = None
    # Whether any row has min_tokens or bad words, i.e. whether bans can come and go.
    bans_possible: bool = True
    # [rows, vocab] bool, True where a token may be sampled (allowed_token_ids).
    allowed: torch.Tensor | None = None
    # (rows, token ids, biases) added to the logits (logit_bias, already clamped).
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # Per-request Python callables (offline API): (row, processor, prompt ids, output ids).
    processors: list[tuple[int, Callable[..., torch.Tensor], list[int], list[int]]] | None = None
    # Top logprobs to return: the largest k any row asked for (vocab size for -1); None: no
    # row asked. ``need_logprob`` rows want the sampled token's logprob even without top-k
    # (cumulative logprobs for best_of).
    max_num_logprobs: int | None = None
    need_logprob: bool = False
