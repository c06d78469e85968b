"""Build ``SamplingMetadata`` for the rows sampled in one step."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from pagedllm.sample.logits_processors import bad_word_bans
from pagedllm.sample.metadata import PenaltyInputs, SamplingMetadata
from pagedllm.sample.penalties import bin_counts
from pagedllm.sampling_params import SamplingParams, SamplingType
from pagedllm.worker.request_state import RequestState

if TYPE_CHECKING:
    from pagedllm.worker.penalty_state import PenaltyState


def build_sampling_metadata(
    states: list[RequestState],
    vocab_size: int,
    device: torch.device,
    penalty_state: PenaltyState | None = None,
    previous: SamplingMetadata | None = None,
) -> SamplingMetadata:
    """The metadata of the sampled rows. ``previous``: the metadata of the last step when
    its rows were these same requests, in the same order: everything fixed per request
    (parameters, penalty slots, bias, allowed ids, row split) is taken from it, and only
    what moves with the generated tokens (min_tokens and bad-word bans, processors'
    inputs) is rebuilt, so a steady decode batch costs a few host operations."""
    if previous is not None:
        return dataclasses.replace(
            previous,
            banned=_banned(states, device) if previous.bans_possible else None,
            processors=_processors(states) if previous.processors is not None else None,
        )
    params = [s.sampling_params for s in states]
    # Rows often share one SamplingParams (an offline batch): what no row asks for is
    # found on the distinct objects, and its per-row scan skipped (a full rebuild, on every
    # change of the batch, was ~1.2 ms at 1,024 rows).
    distinct = list({id(p): p for p in params}.values())
    greedy = [p.sampling_type == SamplingType.GREEDY for p in params]
    temperature = [1.0 if g else p.temperature for g, p in zip(greedy, params)]
    generators = {i: s.generator for i, s in enumerate(states) if s.generator is not None}
    penalties = None
    if any(p.uses_penalties for p in distinct):
        if penalty_state is not None:
            penalties = penalty_state.inputs(states)
        else:
            penalties = _penalties(states, vocab_size, device)
    fast, slow, fast_k, group_gens = _split_fast_rows(
        params, greedy, vocab_size, generators, device
    )
    bans_possible = any(p.min_tokens > 0 or p.bad_words_token_ids for p in distinct)
    return SamplingMetadata(
        temperature=_tensor(temperature, torch.float32, device),
        greedy=_tensor(greedy, torch.bool, device),
        all_greedy=all(greedy),
        all_random=not any(greedy),
        top_k=_top_k(params, distinct, vocab_size, device),
        top_p=_per_row(params, distinct, "top_p", 1.0, device),
        min_p=_per_row(params, distinct, "min_p", 0.0, device),
        generators=generators,
        fast_rows=fast,
        fast_k=fast_k,
        slow_rows=slow,
        group_generators=group_gens,
        penalties=penalties,
        banned=_banned(states, device) if bans_possible else None,
        bans_possible=bans_possible,
        allowed=_allowed(params, distinct, vocab_size, device),
        bias=_bias(params, device) if any(p.logit_bias for p in distinct) else None,
        processors=_processors(states) if any(p.logits_processors for p in distinct) else None,
        max_num_logprobs=max_num_logprobs(distinct, vocab_size),
        need_logprob=any(needs_cumulative_logprob(p) for p in distinct),
    )


def _top_k(
    params: list[SamplingParams],
    distinct: list[SamplingParams],
    vocab_size: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Each row's top_k (the vocabulary for none), or None when no row has one."""
    if all(not 0 < p.top_k < vocab_size for p in distinct):
        return None
    top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
    return _tensor(top_k, torch.int64, device)


def _per_row(
    params: list[SamplingParams],
    distinct: list[SamplingParams],
    name: str,
    neutral: float,
    device: torch.device,
) -> torch.Tensor | None:
    """Each row's float parameter ``name``, or None when every row has the neutral value."""
    if all(getattr(p, name) == neutral for p in distinct):
        return None
    return _tensor([getattr(p, name) for p in params], torch.float32, device)


TOP_K_FAST = 1024  # up to this top_k, sample from torch.topk's candidates instead of a sort


def _split_fast_rows(
    params: list[SamplingParams],
    greedy: list[bool],
    vocab_size: int,
    generators: dict[int, torch.Generator],
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None, int, tuple[dict, dict]]:
    """(fast rows, other rows, k, each group's generators by position in the group):
    random rows with a small top_k take the top-k path."""
    fast = [i for i, p in enumerate(params) if not greedy[i] and 0 < p.top_k <= TOP_K_FAST]
    if not fast:
        return None, None, 0, ({}, {})
    chosen = set(fast)
    slow = [i for i in range(len(params)) if i not in chosen]
    k = min(max(params[i].top_k for i in fast), vocab_size)
    gens = tuple(
        {j: generators[row] for j, row in enumerate(group) if row in generators}
        for group in (fast, slow)
    )
    slow_rows = _tensor(slow, torch.int64, device) if slow else None
    return _tensor(fast, torch.int64, device), slow_rows, k, gens  # type: ignore[return-value]


def max_num_logprobs(params: list[SamplingParams], vocab_size: int) -> int | None:
    ks = [vocab_size if p.logprobs == -1 else p.logprobs for p in params if p.logprobs is not None]
    return max(ks) if ks else None


def needs_cumulative_logprob(params: SamplingParams) -> bool:
    """best_of ranks samples by cumulative logprob, asked for or not."""
    return params.best_of is not None and params.best_of > params.n


def _tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor(values, dtype=dtype), device)


def to_device(cpu: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device without stalling: a copy from pinned memory is asynchronous
    (a copy from pageable memory would wait for the GPU to finish its queued work)."""
    if device.type != "cuda":
        return cpu
    return cpu.pin_memory().to(device, non_blocking=True)


def _penalties(states: list[RequestState], vocab_size: int, device: torch.device) -> PenaltyInputs:
    """Histories rebuilt from the host lists (used without a PenaltyState)."""
    params = [s.sampling_params for s in states]
    prompt = _padded([s.prompt_token_ids for s in states], vocab_size, device)
    output = _padded([s.output_token_ids for s in states], vocab_size, device)
    return PenaltyInputs(
        prompt_mask=bin_counts(prompt, vocab_size) > 0,
        output_counts=bin_counts(output, vocab_size),
        presence=_tensor([p.presence_penalty for p in params], torch.float32, device),
        frequency=_tensor([p.frequency_penalty for p in params], torch.float32, device),
        repetition=_tensor([p.repetition_penalty for p in params], torch.float32, device),
    )


def _padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    """[rows, longest] int64, padded with ``pad``; filled by numpy row copies (a torch
    tensor per row costs more than the copy itself)."""
    width = max((len(r) for r in rows), default=0) or 1
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return to_device(torch.from_numpy(out), device)


def _banned(
    states: list[RequestState], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stop ids before min_tokens; a bad word's last token after its earlier tokens."""
    rows, cols = [], []
    for i, state in enumerate(states):
        params = state.sampling_params
        ids: list[int] = []
        if state.num_output_tokens < params.min_tokens:
            ids += params.all_stop_token_ids
        if params.bad_words_token_ids:
            ids += bad_word_bans(params.bad_words_token_ids, state.output_token_ids)
        rows += [i] * len(ids)
        cols += ids
    if not rows:
        return None
    return _tensor(rows, torch.int64, device), _tensor(cols, torch.int64, device)


def _allowed(
    params: list[SamplingParams],
    distinct: list[SamplingParams],
    vocab_size: int,
    device: torch.device,
) -> torch.Tensor | None:
    if all(p.allowed_token_ids is None for p in distinct):
        return None
    mask = torch.ones(len(params), vocab_size, dtype=torch.bool)
    for i, p in enumerate(params):
        if p.allowed_token_ids is not None:
            mask[i] = False
            mask[i, p.allowed_token_ids] = True
    return to_device(mask, device)


def _bias(
    params: list[SamplingParams], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    rows, cols, values = [], [], []
    for i, p in enumerate(params):
        for token_id, bias in (p.logit_bias or {}).items():
            rows.append(i)
            cols.append(token_id)
            values.append(bias)
    if not rows:
        return None
    return (
        _tensor(rows, torch.int64, device),
        _tensor(cols, torch.int64, device),
        _tensor(values, torch.float32, device),
    )


def _processors(states: list[RequestState]) -> list | None:
    found = [
        (i, fn, s.prompt_token_ids, s.output_token_ids)
        for i, s in enumerate(states)
        for fn in s.sampling_params.logits_processors or []
    ]
    return found or None
