"""Repetition, frequency and presence penalties, as vLLM and transformers define them.

- repetition (multiplicative, over prompt and output tokens): a seen token's logit is
  divided by the penalty when positive, multiplied by it when negative;
- frequency: logit -= penalty * count of the token among the generated tokens;
- presence: logit -= penalty if the token was generated at least once.
"""

from __future__ import annotations

import torch

from pagedllm.sample.metadata import PenaltyInputs


def apply_penalties(logits: torch.Tensor, p: PenaltyInputs) -> torch.Tensor:
    """logits: [rows, vocab] float32 -> penalized logits (in place on CUDA when the
    statistics come as tables with slots: one fused kernel; otherwise a new tensor)."""
    if p.slots is not None and logits.is_cuda:
        from pagedllm.kernels.penalties import apply_penalties_inplace

        apply_penalties_inplace(
            logits, p.prompt_mask, p.output_counts, p.slots,
            p.presence, p.frequency, p.repetition,
        )  # fmt: skip
        return logits
    if p.slots is not None:
        p = PenaltyInputs(
            p.prompt_mask.index_select(0, p.slots), p.output_counts.index_select(0, p.slots),
            p.presence, p.frequency, p.repetition,
        )  # fmt: skip
    return _apply_penalties(logits, p)


def _apply_penalties(logits: torch.Tensor, p: PenaltyInputs) -> torch.Tensor:
    """The reference: one torch op at a time, over rows already in batch order."""
    seen = p.prompt_mask | (p.output_counts > 0)
    repetition = p.repetition.unsqueeze(1).expand_as(logits)
    scale = torch.where(seen, repetition, torch.ones_like(logits))
    logits = torch.where(logits > 0, logits / scale, logits * scale)
    logits -= p.frequency.unsqueeze(1) * p.output_counts
    logits -= p.presence.unsqueeze(1) * (p.output_counts > 0).to(logits.dtype)
    return logits


def bin_counts(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, length] ids padded with ``vocab_size`` -> [rows, vocab] counts."""
    counts = torch.zeros(
        token_ids.shape[0], vocab_size + 1, dtype=torch.float32, device=token_ids.device
    )
    counts.scatter_add_(1, token_ids, torch.ones_like(token_ids, dtype=torch.float32))
    return counts[:, :vocab_size]
