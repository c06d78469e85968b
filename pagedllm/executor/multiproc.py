"""The engine core's side of tensor / pipeline parallelism on one machine: one worker
process per rank (``worker_proc``), each step's scheduler output sent to every rank, the
step's output taken from the output rank (the first rank of the last pipeline stage).

Invariants:
- Every rank gets every call, in the same order (so they run the same collectives).
- Every call is answered by every rank; the executor waits with a bound, and while it
  waits it checks that every worker process lives: a dead rank, a silent one, or ranks
  that disagree (some failed, some did not) raise ``WorkerDiedError``, which stops the
  engine. A failure of every rank alike is the step's (one request's) and is raised as is,
  for the engine's quarantine.
- The scheduler's own records (``SchedulerOutput.scheduled_requests``, ``sampling_req_ids``)
  never leave the core; structured outputs' bitmask is filled here, before the step is
  sent.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import zmq

from pagedllm.config import EngineConfig
from pagedllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.distributed.parallel_state import output_rank
from pagedllm.executor.base import (
    COLLECTIVE_TIMEOUT_S,
    START_TIMEOUT_S,
    STEP_TIMEOUT_S,
    RankExecutor,
)
from pagedllm.executor.errors import WorkerDiedError
from pagedllm.executor.messages import READY_SEQ, Call, Reply, WorkerArgs, step_args
from pagedllm.executor.parent_watch import module_argv, spawn_owned
from pagedllm.executor.replies import values_in_rank_order
from pagedllm.logger import init_logger
from pagedllm.sample.grammar_mask import GrammarBitmask
from pagedllm.worker.kv_cache import kv_cache_dtype

logger = init_logger(__name__)

_POLL_MS = 100  # how often a waiting executor checks that its workers live


@dataclass(frozen=True)
class RemoteStep:
    """A step sent to the workers; ``MultiprocExecutor.resolve`` collects its answers."""

    seq: int


class MultiprocExecutor(RankExecutor):
    def __init__(self, config: EngineConfig) -> None:
        parallel = config.parallel_config
        self.world_size = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
        self.output_rank = output_rank(
            parallel.tensor_parallel_size, parallel.pipeline_parallel_size
        )
        dtype = getattr(torch, config.model_config.dtype)
        device = torch.device(config.device)
        self.kv_cache_dtype = kv_cache_dtype(config.cache_config, dtype, device)
        self._dir = tempfile.mkdtemp(prefix="pagedllm-ranks-")
        self._context = zmq.Context()
        self._results = self._context.socket(zmq.PULL)
        self._results.bind(f"ipc://{self._dir}/results")
        self._inboxes = [self._context.socket(zmq.PUSH) for _ in range(self.world_size)]
        for rank, socket in enumerate(self._inboxes):
            socket.bind(f"ipc://{self._dir}/rank{rank}")
        self._procs: list[subprocess.Popen] = []
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._dir)
        self._seq = READY_SEQ
        self._replies: dict[int, dict[int, Reply]] = {}
        for rank in range(self.world_size):
            self._procs.append(self._start(config, rank))
        self._collect(READY_SEQ, START_TIMEOUT_S)
        logger.info(
            "%d worker processes (tensor parallel %d x pipeline parallel %d) over gloo",
            self.world_size, parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
        )  # fmt: skip

    def _start(self, config: EngineConfig, rank: int) -> subprocess.Popen:
        """A plain subprocess (as the engine core itself): a fresh interpreter, the
        caller's ``__main__`` never re-imported; its stdin stays open (parent watch)."""
        args = WorkerArgs(
            config, rank, f"ipc://{self._dir}/rank{rank}", f"ipc://{self._dir}/results",
            f"file://{self._dir}/rendezvous", COLLECTIVE_TIMEOUT_S,
        )  # fmt: skip
        proc = spawn_owned(module_argv("pagedllm.executor.worker_proc"),
                           stdin=subprocess.PIPE)  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(args))
        proc.stdin.flush()
        return proc

    # -- the Executor contract -----------------------------------------------------------

    def execute_model(
        self,
        scheduler_output: SchedulerOutput,
        grammar_bitmask: Callable[[list[str]], GrammarBitmask | None] | None = None,
    ) -> RemoteStep:
        args = step_args(scheduler_output, grammar_bitmask)
        return RemoteStep(self._send("execute_model", *args))

    def resolve(self, launched: RemoteStep) -> ModelRunnerOutput:
        return self._collect(launched.seq, STEP_TIMEOUT_S)[self.output_rank]

    def check_health(self) -> None:
        """Raise ``WorkerDiedError`` if a worker process is gone (called while idle)."""
        for rank, proc in enumerate(self._procs):
            code = proc.poll()
            if code is not None:
                raise WorkerDiedError(
                    f"Worker rank {rank} (pid {proc.pid}) exited with code {code}; the engine "
                    f"needs all {self.world_size} ranks for every step and stops."
                )

    def worker_pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def shutdown(self) -> None:
        """Ask the workers to stop, then make sure they have (kill after a grace period)."""
        if not self._finalizer.alive:
            return
        try:
            if all(proc.poll() is None for proc in self._procs):
                self._send("shutdown")
        except zmq.ZMQError:
            pass
        for socket in [self._results, *self._inboxes]:
            socket.close(linger=0)
        self._context.term()
        self._finalizer()

    # -- calls ---------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, timeout: float = STEP_TIMEOUT_S) -> list[Any]:
        return self._collect(self._send(method, *args), timeout)

    def _send(self, method: str, *args: Any) -> int:
        self._seq += 1
        message = pickle.dumps(Call(self._seq, method, args))
        for socket in self._inboxes:
            socket.send(message)
        return self._seq

    def _collect(self, seq: int, timeout: float) -> list[Any]:
        """Every rank's answer to call ``seq`` (answers to later calls are kept: with
        async scheduling a step is sent before the previous one is collected)."""
        deadline = time.monotonic() + timeout
        replies = self._replies.setdefault(seq, {})
        while len(replies) < self.world_size:
            if self._results.poll(_POLL_MS):
                reply: Reply = pickle.loads(self._results.recv())
                self._replies.setdefault(reply.seq, {})[reply.rank] = reply
                continue
            self.check_health()
            if time.monotonic() > deadline:
                silent = sorted(set(range(self.world_size)) - set(replies))
                raise WorkerDiedError(
                    f"Worker rank(s) {silent} did not answer within {timeout:.0f} s; the "
                    "engine stops."
                )
        del self._replies[seq]
        return values_in_rank_order(replies, self.world_size)


def _stop(procs: list[subprocess.Popen], directory: str) -> None:
    """Workers gone, for sure, and their sockets' directory removed (also at garbage
    collection and interpreter exit: a worker must never outlive its executor)."""
    deadline = time.monotonic() + 2.0
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
    shutil.rmtree(directory, ignore_errors=True)
