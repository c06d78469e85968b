"""Per-step sampling inputs, one row per sampled position, built by the model runner."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PenaltyInputs:
    """Token history for the penalties, only built when some row uses one."""

    prompt_mask: torch.Tensor  # [rows, vocab] bool: token occurs in the prompt
    output_counts: torch.Tensor  # [rows, vocab] count of the token among generated ones
    presence: torch.Tensor  # [rows]
    frequency: torch.Tensor  # [rows]
    repetition: torch.Tensor  # [rows]


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor  # [rows]; greedy rows hold 1.0 (they take the argmax)
    greedy: torch.Tensor  # [rows] bool
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None  # [rows] int64, vocab size where disabled; None: none uses it
    top_p: torch.Tensor | None  # [rows]; 1.0 where disabled
    min_p: torch.Tensor | None  # [rows]; 0.0 where disabled
    # row -> the request's own generator (seeded requests); other rows use the global RNG.
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    penalties: PenaltyInputs | None = None
    # (rows, token ids) whose logits are -inf this step: eos/stop ids before min_tokens.
    banned: tuple[torch.Tensor, torch.Tensor] | None = None
