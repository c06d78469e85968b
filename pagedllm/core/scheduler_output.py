"""The small typed hand-offs between the scheduler, the model runner and the engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from pagedllm.core.request import ErrorCause, FinishReason, Request
from pagedllm.core.step_time import StepWork
from pagedllm.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A request the runner has not seen before: sent in full, once."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    # Tokens generated before the runner (re)learnt of the request: empty the first time,
    # the whole output after a failed step made the runner drop the request's state.
    output_token_ids: list[int] = field(default_factory=list)


class CachedRequestData(msgspec.Struct, gc=False):
    """A request the runner already holds: only what changed this step. One per running
    request per step, alive while the step is in flight: kept out of the garbage
    collector's scans (``gc=False``: it holds no object that could form a cycle)."""

    req_id: str
    # True when it was preempted and is scheduled again: ``new_block_ids`` then replaces its
    # block table instead of extending it.
    resumed_from_preemption: bool
    # Empty (a shared empty tuple) for the decode steps that take no block.
    new_block_ids: Sequence[int]
    num_computed_tokens: int


@dataclass
class SchedulerOutput:
    """One step's plan. Request order is the order of the flat batch the runner builds."""

    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    # req_id -> tokens to compute this step (prefill chunk length, or 1 for a decode).
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # Requests finished or aborted since the previous step: the runner drops their state.
    finished_req_ids: set[str] = field(default_factory=set)
    # Requests preempted this step: the runner keeps their state but stops batching them.
    preempted_req_ids: set[str] = field(default_factory=set)
    # Host-tier copies (``core/host_tier.py``), run by every rank on its share of the KV
    # before the forward pass, swap-outs first: (device block, host slot) saves a block
    # about to be reused; (host slot, device block) brings back a prefix-cache hit.
    kv_swap_out: list[tuple[int, int]] = field(default_factory=list)
    kv_swap_in: list[tuple[int, int]] = field(default_factory=list)
    # (device block, host slot): cached blocks saved beside the forward pass (their KV from
    # earlier steps; none written or taken by this one); the next step waits for them.
    kv_save_ahead: list[tuple[int, int]] = field(default_factory=list)
    # The scheduler's own records, not read by the runner: each scheduled request object,
    # and the requests this step samples a token for, in scheduling order (each counted in
    # its ``num_output_placeholders`` until ``update_from_output`` brings the token). No
    # object per request: what survives a step in flight is scanned by the collector.
    scheduled_requests: dict[str, Request] = field(default_factory=dict, repr=False, compare=False)
    sampling_req_ids: list[str] = field(default_factory=list, repr=False, compare=False)
    # With a step time target: what the step computes and when its scheduling began
    # (``time.perf_counter``), for ``Scheduler.observe_step``.
    work: StepWork | None = field(default=None, repr=False, compare=False)
    scheduled_at: float = field(default=0.0, repr=False, compare=False)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0

    @property
    def is_all_decodes(self) -> bool:
        """Every scheduled request computes exactly one token: each computes at least one,
        so the total equals the count of requests only then (no per-request scan)."""
        return self.total_num_scheduled_tokens == len(self.num_scheduled_tokens)


class LogprobsLists(msgspec.Struct, array_like=True, gc=False):
    """Top log-probabilities of sampled positions: row i belongs to sampled position i.

    ``token_ids[i][0]`` is the sampled token, followed by the top-k tokens by logprob.
    A msgspec struct: it crosses from the engine process to the front end every step.
    """

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]  # rank of the sampled token in the distribution (1 = most likely)


@dataclass
class ModelRunnerOutput:
    """What one step produced, per scheduled request."""

    req_ids: list[str]
    # Tokens sampled for each request (empty for a prefill chunk that did not reach the end
    # of its prompt). A sequence, so speculative decoding can return several; the runner's
    # are tuples (``LaunchedStep.resolve`` says why).
    sampled_token_ids: list[Sequence[int]]
    # Per request: logprobs of its sampled positions, or None when not asked for.
    logprobs: list[LogprobsLists | None] | None = None
    # Per request: prompt logprobs computed this step (a chunk), or None.
    prompt_logprobs: list[LogprobsLists | None] | None = None


class EngineCoreOutput(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    """What changed for one request in one step, as the output processor needs it (sent
    from the engine process to the front end: a compact msgspec struct)."""

    request_id: str
    new_token_ids: Sequence[int]  # a list once decoded from the wire
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    new_logprobs: LogprobsLists | None = None
    new_prompt_logprobs: LogprobsLists | None = None
    error: str | None = None  # with finish_reason ERROR: why, for this request's caller only
    # The engine core's times (Request.queued_time, scheduled_time): in the first output only.
    queued_time: float | None = None
    scheduled_time: float | None = None
    # With ``error``: what caused it (the request's own input: a client's 400, not a fault).
    error_cause: ErrorCause = ErrorCause.ENGINE

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
