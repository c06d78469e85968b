"""The sampler: logits in, one token id per row (and, when asked, logprobs) out.

Order, as in vLLM: raw logprobs are taken first (the model's own distribution); then
allowed ids -> banned ids (min_tokens, bad words) -> logit bias -> user callables ->
penalties -> greedy argmax -> temperature -> min-p -> top-k / top-p -> sample. Sampling
draws ``argmax(probs / q)`` with ``q ~ Exponential(1)``, which picks token i with
probability probs[i]; a seeded request draws its q from its own generator, so its tokens do
not depend on the rest of the batch. On CUDA, rows that only apply a temperature (no
min-p, top-k, top-p or generator in the batch) are drawn by the Gumbel-max trick in one pass
over the logits instead (``pagedllm.kernels.sampling``): the same distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pagedllm.sample.logits_processors import (
    apply_allowed,
    apply_banned,
    apply_bias,
    apply_user_processors,
)
from pagedllm.sample.logprobs import LogprobsTensors, raw_logprobs
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


def sample(
    logits: torch.Tensor, md: SamplingMetadata, next_seed: Callable[[], int] | None = None
) -> torch.Tensor:
    """Processed logits -> token ids, greedy rows by argmax (float32, or the model's dtype
    on the one-pass path, which widens as it reads). ``next_seed`` gives a
    fresh seed for the one-pass CUDA path (without it, the torch path always runs)."""
    greedy = None if md.all_random else logits.argmax(dim=-1)
    if md.all_greedy:
        assert greedy is not None
        return greedy
    if md.fast_rows is not None and md.slow_rows is None and md.min_p is None:
        # Every row samples from its top-k: dividing by a positive temperature keeps each
        # row's order, so it is applied to the k candidates instead of the whole vocabulary.
        assert md.top_k is not None
        sampled = _sample_top_k(
            logits, md.top_k, md.top_p, md.fast_k, md.generators, md.temperature
        )
    elif next_seed is not None and _temperature_only(logits, md):
        from pagedllm.kernels.sampling import gumbel_sample

        sampled = gumbel_sample(logits, md.temperature, next_seed())
    else:
        sampled = _sample_tempered(logits, md)
    return sampled if greedy is None else torch.where(md.greedy, greedy, sampled)


def _unprocessed(md: SamplingMetadata) -> bool:
    """No processor changes the logits (``process_logits`` returns them as they are)."""
    return (
        md.allowed is None
        and md.banned is None
        and md.bias is None
        and not md.processors
        and md.penalties is None
    )


def _temperature_only(logits: torch.Tensor, md: SamplingMetadata) -> bool:
    """No truncation and no per-request generator: a draw from softmax(logits / T) alone."""
    return (
        logits.is_cuda
        and md.min_p is None
        and md.top_k is None
        and md.top_p is None
        and md.fast_rows is None
        and not md.generators
    )


def _sample_tempered(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Temperature and min-p over the whole vocabulary, then each row's truncation."""
    logits = logits / md.temperature.unsqueeze(1)
    if md.min_p is not None:
        logits = apply_min_p(logits, md.min_p)
    if md.fast_rows is None:
        return _sample_rows(logits, md.top_k, md.top_p, md.generators)
    return _sample_split(logits, md)


def _sample_rows(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    generators: dict[int, torch.Generator],
) -> torch.Tensor:
    if top_k is not None or top_p is not None:
        logits = apply_top_k_top_p(logits, top_k, top_p)
    return random_sample(logits.softmax(dim=-1), generators)


def _sample_split(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Fast rows from their top-k candidates, the others over the whole vocabulary."""
    assert md.fast_rows is not None and md.top_k is not None
    sampled = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    fast_gens, slow_gens = md.group_generators
    groups = [(md.fast_rows, True, fast_gens), (md.slow_rows, False, slow_gens)]
    for rows, fast, generators in groups:
        if rows is None:
            continue
        top_p = md.top_p.index_select(0, rows) if md.top_p is not None else None
        top_k = md.top_k.index_select(0, rows)
        part = logits.index_select(0, rows)
        if fast:
            picked = _sample_top_k(part, top_k, top_p, md.fast_k, generators)
        else:
            picked = _sample_rows(part, top_k, top_p, generators)
        sampled.index_copy_(0, rows, picked)
    return sampled


def _sample_top_k(
    logits: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor | None,
    k: int,
    generators: dict[int, torch.Generator],
    temperature: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample among each row's top_k tokens (and then top_p within them). ``temperature``:
    [rows], to divide the candidates by when the logits have not been divided yet."""
    values, indices = logits.topk(k, dim=-1)  # descending
    if temperature is not None:
        values = values / temperature.unsqueeze(1)
    columns = torch.arange(k, device=logits.device)
    values = values.masked_fill(columns[None, :] >= top_k[:, None], float("-inf"))
    if top_p is not None:
        probs = values.softmax(dim=-1)
        # Keep a token while the probability of the tokens above it is below p (the first
        # is always kept): the nucleus, as in the full-vocabulary path.
        before = probs.cumsum(dim=-1) - probs
        values = values.masked_fill(before >= top_p[:, None], float("-inf"))
    choice = random_sample(values.softmax(dim=-1), generators)
    return indices.gather(1, choice.unsqueeze(1)).squeeze(1)


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        # The one-pass path's Philox seeds follow from the engine's seed alone (not from
        # torch's RNG state, which loading may consume unevenly): every rank that samples
        # the same logits draws the same tokens, and a run repeats.
        self._base_seed = (seed * 2_654_435_761) % 2**30
        self._calls = 0

    def _next_seed(self) -> int:
        """A new Philox seed per step for the one-pass path."""
        self._calls += 1
        return (self._base_seed + self._calls * 1_000_003) % 2**30

    def __call__(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        """logits: [rows, vocab] (any float dtype), on the device the result stays on."""
        raw = logits  # the model's own distribution, for logprobs; never changed below
        if not (_unprocessed(md) and _temperature_only(logits, md)):
            # The one-pass CUDA path widens each logit as it reads it; the others want a
            # float32 copy (processors work in place, softmax wants the precision).
            logits = logits.float()
        wants_logprobs = md.max_num_logprobs is not None or md.need_logprob
        if wants_logprobs and logits.data_ptr() == raw.data_ptr():
            logits = logits.clone()  # some processors work in place
        token_ids = sample(process_logits(logits, md), md, self._next_seed)
        logprobs = None
        if wants_logprobs:
            logprobs = raw_logprobs(raw, token_ids, md.max_num_logprobs or 0)
        return SamplerOutput(token_ids, logprobs)
