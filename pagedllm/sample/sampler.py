"""The sampler: logits in, one token id per row (and, when asked, logprobs) out.

Order, as in vLLM: raw logprobs are taken first (the model's own distribution); then
allowed ids -> banned ids (min_tokens, bad words) -> logit bias -> user callables ->
penalties -> greedy argmax -> temperature -> min-p -> top-k / top-p -> sample. Sampling
draws ``argmax(probs / q)`` with ``q ~ Exponential(1)``, which picks token i with
probability probs[i]; a seeded request draws its q from its own generator, so its tokens do
not depend on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.sample.logits_processors import (
    apply_allowed,
    apply_banned,
    apply_bias,
    apply_user_processors,
)
from pagedllm.sample.logprobs import LogprobsTensors, compute_logprobs
from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.penalties import apply_penalties
from pagedllm.sample.top_k_top_p import apply_min_p, apply_top_k_top_p


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [rows] int64
    logprobs: LogprobsTensors | None  # raw logprobs of the sampled tokens and the top-k


def process_logits(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Everything that shapes the distribution before temperature. float32, [rows, vocab]."""
    logits = apply_allowed(logits, md)
    logits = apply_banned(logits, md)
    logits = apply_bias(logits, md)
    logits = apply_user_processors(logits, md)
    if md.penalties is not None:
        logits = apply_penalties(logits, md.penalties)
    return logits


def random_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    q = torch.empty_like(probs).exponential_()
    for row, generator in generators.items():
        q[row].exponential_(generator=generator)
    return probs.div_(q).argmax(dim=-1)


def sample(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Processed float32 logits -> token ids, greedy rows by argmax."""
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


class Sampler:
    def __call__(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        """logits: [rows, vocab] (any float dtype), on the device the result stays on."""
        logits = logits.float()
        wants_logprobs = md.max_num_logprobs is not None or md.need_logprob
        raw = logits.clone() if wants_logprobs else None
        token_ids = sample(process_logits(logits, md), md)
        logprobs = None
        if raw is not None:
            logprobs = compute_logprobs(raw, token_ids, md.max_num_logprobs or 0)
        return SamplerOutput(token_ids, logprobs)
