"""The sampler: processed logits in, one token id per row out.

Order, as in vLLM: banned ids (min_tokens) -> penalties -> greedy argmax -> temperature ->
min-p -> top-k / top-p -> sample. Sampling draws ``argmax(probs / q)`` with
``q ~ Exponential(1)``, which picks token i with probability probs[i]; a seeded request
draws its q from its own generator, so its tokens do not depend on the rest of the batch.
"""

from __future__ import annotations

import torch

from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.penalties import apply_penalties
from pagedllm.sample.top_k_top_p import apply_min_p, apply_top_k_top_p


def apply_banned(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    if md.banned is not None:
        rows, cols = md.banned
        logits[rows, cols] = float("-inf")
    return logits


def process_logits(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Everything that shapes the distribution before temperature. float32, [rows, vocab]."""
    logits = apply_banned(logits, md)
    if md.penalties is not None:
        logits = apply_penalties(logits, md.penalties)
    return logits


def random_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    q = torch.empty_like(probs).exponential_()
    for row, generator in generators.items():
        q[row].exponential_(generator=generator)
    return probs.div_(q).argmax(dim=-1)


class Sampler:
    def __call__(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """logits: [rows, vocab] -> sampled token ids [rows] int64 (on the logits' device)."""
        logits = process_logits(logits.float(), md)
        greedy = None if md.all_random else logits.argmax(dim=-1)
        if md.all_greedy:
            assert greedy is not None
            return greedy
        logits = logits / md.temperature.unsqueeze(1)
        if md.min_p is not None:
            logits = apply_min_p(logits, md.min_p)
        if md.top_k is not None or md.top_p is not None:
            logits = apply_top_k_top_p(logits, md.top_k, md.top_p)
        sampled = random_sample(logits.softmax(dim=-1), md.generators)
        return sampled if greedy is None else torch.where(md.greedy, greedy, sampled)
