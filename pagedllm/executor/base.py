"""The executor contract: what the engine core calls to run the model, wherever it runs.

The uniprocess executor is the ``ModelRunner`` itself (tensor and pipeline parallel size 1:
no extra process, no messages, no collectives, no copies). ``MultiprocExecutor`` runs one
worker process per rank on this machine, ``RayExecutor`` one Ray actor per rank anywhere in
a Ray cluster; both have the same methods (and ``check_health``, ``worker_pids``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from pagedllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.sample.grammar_mask import GrammarBitmask
from pagedllm.worker.kv_cache import KVCachePlan

# Bounds on every collective (inside the workers) and on the executors' waits. A step's
# wait is the collective bound plus a margin, so a rank stuck in a collective reports its
# timeout before the executor gives up on it.
COLLECTIVE_TIMEOUT_S = 300.0
STEP_TIMEOUT_S = COLLECTIVE_TIMEOUT_S + 30.0
START_TIMEOUT_S = 1800.0  # start-up, weight loading (a large checkpoint from a slow disk)


class Executor(Protocol):
    kv_cache_dtype: Any  # the torch dtype the cache stores

    def load_model(self) -> None: ...

    def plan_kv_cache(self) -> KVCachePlan:
        """Per rank: the blocks every rank can hold (the fewest any rank can)."""
        ...

    def initialize_kv_cache(self, plan: KVCachePlan) -> None: ...

    def execute_model(
        self,
        scheduler_output: SchedulerOutput,
        grammar_bitmask: Callable[[list[str]], GrammarBitmask | None] | None = None,
    ) -> Any:
        """Start one step; ``resolve`` on the returned handle gives its output."""
        ...

    def resolve(self, launched: Any) -> ModelRunnerOutput: ...

    def launch_blocks(self, scheduler_output: SchedulerOutput) -> bool:
        """Whether launching this step may wait for the device (an eager step's kernels
        fill the launch queue behind the step running): the engine core then resolves the
        step in flight first, so its outputs are not held behind that wait."""
        ...

    def weight_bytes(self) -> int: ...

    def decode_read_bytes(self) -> int: ...

    def shutdown(self) -> None: ...


class RankExecutor(abc.ABC):
    """What the mp and Ray executors do alike: each of these calls goes to every rank, and
    the ranks' answers are combined here. Subclasses carry the calls (``_call``: send to
    every rank, wait, return the answers in rank order)."""

    @abc.abstractmethod
    def _call(self, method: str, *args: Any, timeout: float = STEP_TIMEOUT_S) -> list[Any]: ...

    def load_model(self) -> None:
        self._call("load_model", timeout=START_TIMEOUT_S)

    def plan_kv_cache(self) -> KVCachePlan:
        """The plan every rank can hold: the fewest device blocks any rank fits (one block
        table serves every rank) and the fewest host-tier blocks (pipeline stages of
        different layer counts fit different numbers)."""
        plans: list[KVCachePlan] = self._call("plan_kv_cache", timeout=START_TIMEOUT_S)
        fewest = min(plans, key=lambda plan: plan.num_blocks)
        host = min(plan.num_host_blocks for plan in plans)
        return dataclasses.replace(fewest, num_host_blocks=host)

    def initialize_kv_cache(self, plan: KVCachePlan) -> None:
        self._call("initialize_kv_cache", plan, timeout=START_TIMEOUT_S)

    def launch_blocks(self, scheduler_output: SchedulerOutput) -> bool:
        return False  # ranks run on the CPU (CUDA ranks are refused): no launch queue

    def weight_bytes(self) -> int:
        """Over every rank."""
        return sum(self._call("weight_bytes"))

    def decode_read_bytes(self) -> int:
        """Over every rank: one decode step reads each rank's share."""
        return sum(self._call("decode_read_bytes"))
