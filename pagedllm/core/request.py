"""A request as the scheduler sees it: token ids, progress, status."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from typing import Protocol

from pagedllm.sampling_params import SamplingParams


class FinishReason(enum.IntEnum):
    STOP = 0
    LENGTH = 1
    ABORT = 2
    ERROR = 3  # the engine failed on this request (its own inputs caused a step to fail)

    def __str__(self) -> str:
        return ("stop", "length", "abort", "error")[self.value]


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything from here on is finished.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH_CAPPED = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH_CAPPED: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
    RequestStatus.FINISHED_ERROR: FinishReason.ERROR,
}


class ErrorCause(enum.IntEnum):
    """Why a request failed, which decides what its caller is told."""

    ENGINE = 0  # a fault of the engine's (a 500)
    INPUT = 1  # what the request itself asked (a 400)
    OVERLOADED = 2  # the engine cannot take it now; the same request may succeed later (503)


class GrammarError(RuntimeError):
    """A request's structured output ended it (``OutputGrammar.error``); ``cause``: its
    constraint's doing (INPUT), or the server's grammar work was saturated (OVERLOADED)."""

    def __init__(self, message: str, cause: ErrorCause = ErrorCause.INPUT) -> None:
        super().__init__(message)
        self.cause = cause


class OutputGrammar(Protocol):
    """A structured-output constraint as the scheduler sees it (``structured_output/``)."""

    # Set when the grammar could not be built (the waiting request is rejected), or when
    # finding its allowed tokens took too long (the running request fails with it).
    error: str | None
    error_cause: ErrorCause  # with ``error``

    def is_ready(self) -> bool:
        """Compiled (or failed): until then the request waits."""
        ...

    def accept_token(self, token_id: int) -> bool: ...

    def is_terminated(self) -> bool:
        """The grammar has accepted its stop token: the output is complete."""
        ...

    def release(self) -> None:
        """The request has ended: a compile no other request waits for may be dropped."""
        ...


class Request:
    """One sequence to generate. ``n > 1`` prompts become n requests upstream.

    Invariant: ``num_computed_tokens <= num_tokens + num_output_placeholders``; tokens
    ``[0, num_computed_tokens)`` have their KV in the blocks the KV cache manager holds for
    this request (or will have, once the steps in flight run). A placeholder is a token
    sampled by a scheduled step whose result has not come back yet: with async scheduling
    the next step is scheduled first, computing the unknown token from the device.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_id: int | None,
        arrival_time: float | None = None,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> None:
        if sampling_params.max_tokens is None:
            raise ValueError("max_tokens must be resolved before a request reaches the scheduler.")
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.priority = priority
        self.cache_salt = cache_salt
        self.max_tokens: int = sampling_params.max_tokens
        self.status = RequestStatus.WAITING
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_output_placeholders = 0
        # Prompt tokens found in the prefix cache the first time it was scheduled (-1: never).
        self.num_cached_tokens = -1
        self.num_preemptions = 0
        # The engine core's clock (time.time()): when it received the request and first
        # scheduled it; sent once, with the request's first output, for the phase metrics.
        self.queued_time = time.time()
        self.scheduled_time: float | None = None
        self.timestamps_sent = False
        self.stop_reason: int | str | None = None
        # Chained hashes of the full blocks of all_token_ids, filled in lazily.
        self.block_hashes: list[bytes] = []
        # Requests that need prompt logprobs must compute every prompt token.
        self.skip_prefix_cache = sampling_params.prompt_logprobs is not None
        # Set by the engine for a request with structured outputs.
        self.structured_output: OutputGrammar | None = None
        # (the token count it cannot pass, whether it may stop before): the admission
        # forecast's, found on first use (``core/admission.remaining_steps``).
        self.length_bound: tuple[int, bool] | None = None
        # Whether the model runner holds this request's state (False until it is first
        # scheduled, and again after a failed step made the runner drop it).
        self.known_to_runner = False
        # Why the engine failed this request (status FINISHED_ERROR): its own message.
        self.error: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token_ids(self, token_ids: Iterable[int]) -> None:
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)

    def append_output_token(self, token_id: int) -> None:
        """One sampled token: a decode step's common case, without a list."""
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens})"
        )
