"""What crosses between the engine core and its worker processes (pickled, over ZeroMQ
ipc sockets). Each call goes to every rank with a sequence number; every rank answers it,
so a rank that failed or fell behind is noticed; only the output rank's answer to a step
carries the step's output (the others answer None)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.sample.grammar_mask import GrammarBitmask
from pagedllm.worker.input_batch import batch_order


@dataclass(frozen=True)
class WorkerArgs:
    """A worker's start-up, pickled on its stdin (which then stays open: parent watch)."""

    config: EngineConfig
    rank: int
    inbox_address: str  # the executor's PUSH to this rank
    results_address: str  # every rank's PUSH to the executor
    init_method: str  # torch.distributed's rendezvous
    timeout_s: float  # every collective and point-to-point op


@dataclass(frozen=True)
class Call:
    seq: int
    method: str  # one of worker.METHODS
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Reply:
    seq: int
    rank: int
    ok: bool
    value: Any = None  # the result, or the exception on failure


READY_SEQ = 0  # the reply every rank sends once its process group is up


def step_args(
    scheduler_output: SchedulerOutput,
    grammar_bitmask: Callable[[list[str]], GrammarBitmask | None] | None,
) -> tuple[SchedulerOutput, list[str] | None, GrammarBitmask | None]:
    """An ``execute_model`` call's arguments, the same for every rank: the plan without the
    scheduler's own records (``scheduled_requests`` never leaves the core), and, with
    structured outputs, the bitmask filled here for the rows that sample."""
    sampled_ids, mask = None, None
    if grammar_bitmask is not None:
        sampling = set(scheduler_output.sampling_req_ids)
        sampled_ids = [r for r in batch_order(scheduler_output) if r in sampling]
        mask = grammar_bitmask(sampled_ids) if sampled_ids else None
    plan = dataclasses.replace(
        scheduler_output, scheduled_requests={}, sampling_req_ids=[], work=None
    )
    return plan, sampled_ids, mask
