"""What crosses between the engine core and its worker processes (pickled, over ZeroMQ
ipc sockets). Each call goes to every rank with a sequence number; every rank answers it,
so a rank that failed or fell behind is noticed; only the output rank's answer to a step
carries the step's output (the others answer None)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedllm.config import EngineConfig


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
    method: str  # one of worker_proc.METHODS
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Reply:
    seq: int
    rank: int
    ok: bool
    value: Any = None  # the result, or the exception on failure


READY_SEQ = 0  # the reply every rank sends once its process group is up
