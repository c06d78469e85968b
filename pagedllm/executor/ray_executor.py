"""The engine core's side of the ``ray`` backend: one Ray actor per rank (``ray_actor``),
placed through a Ray cluster (``ray_placement``: each pipeline stage's ranks on one node),
so a model can span several machines. The ranks run the same ``Worker`` as the ``mp``
backend's processes and talk to each other through torch.distributed (gloo), rendezvous
at rank 0's node.

Invariants (those of ``MultiprocExecutor``, carried by Ray instead of ZeroMQ):
- Every rank gets every call, in the same order: Ray runs one caller's calls to an actor
  in the order they were made. A call is pickled once; a large one is put in Ray's object
  store once and every actor reads it from there.
- Every call is answered by every rank, waited for with a bound; an actor that dies (its
  call's result is a Ray error), a silent one, or ranks that disagree raise
  ``WorkerDiedError``, which stops the engine. While idle, ``check_health`` pings the
  actors once a second, so a lost rank ends the engine even when no step would notice.
- The actors and placement groups are released at shutdown, at garbage collection and at
  exit; a Ray connection this executor made is closed (and a local instance it started
  stops). Ray also ends the actors if this process dies: they belong to it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from pagedllm import envs
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
from pagedllm.executor.messages import Call, Reply, step_args
from pagedllm.executor.ray_actor import RankActor, Whereabouts
from pagedllm.executor.ray_cluster import connect, import_ray
from pagedllm.executor.ray_placement import (
    STAGE_STRATEGY,
    forwarded_env,
    rank_slots,
    ranks_on_same_node,
    rendezvous_url,
    resource_name,
    stage_bundles,
)
from pagedllm.executor.replies import values_in_rank_order
from pagedllm.logger import init_logger
from pagedllm.sample.grammar_mask import GrammarBitmask
from pagedllm.worker.kv_cache import kv_cache_dtype

logger = init_logger(__name__)

_POLL_S = 0.1  # how often a waiting executor looks at its ranks' answers
_PING_INTERVAL_S = 1.0  # idle health checks
# Calls up to this size go inline with each actor call: Ray's own limit for arguments
# passed directly (max_direct_call_object_size); above it Ray would store a copy per actor.
_INLINE_BYTES = 100 * 1024


@dataclass(frozen=True)
class RayStep:
    """A step sent to the actors; ``RayExecutor.resolve`` collects its answers."""

    answers: list[Any]  # ObjectRef of each rank's Reply, rank order


class RayExecutor(RankExecutor):
    def __init__(self, config: EngineConfig) -> None:
        ray = import_ray()
        self._ray = ray
        parallel = config.parallel_config
        self.tp_size, self.pp_size = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
        self.world_size = self.tp_size * self.pp_size
        self.output_rank = output_rank(self.tp_size, self.pp_size)
        dtype = getattr(torch, config.model_config.dtype)
        device = torch.device(config.device)
        self.kv_cache_dtype = kv_cache_dtype(config.cache_config, dtype, device)
        self._seq = 0
        self._pings: list[Any] | None = None
        self._next_ping = 0.0
        self._actors: list[Any] = []
        self._where: list[Whereabouts] = []
        self._groups: list[Any] = []
        owns_connection = connect(ray)
        self._finalizer = weakref.finalize(
            self, _release, ray, self._actors, self._groups, owns_connection
        )
        try:
            self._place(config.device)
            self._where.extend(self._whereabouts())
            self._start(config)
        except BaseException:
            self._finalizer()
            raise
        nodes = len({w.node_id for w in self._where})
        logger.info(
            "%d Ray actors (tensor parallel %d x pipeline parallel %d) on %d node(s) over gloo",
            self.world_size, self.tp_size, self.pp_size, nodes,
        )  # fmt: skip

    # -- start-up ------------------------------------------------------------------------

    def _place(self, device: str) -> None:
        """One placement group per pipeline stage, its bundles strictly on one node; then
        an actor in each bundle, rank order."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._reserve(stage_bundles(self.tp_size, device))
        cpus, gpus = (0, 1) if resource_name(device) == "GPU" else (1, 0)
        actor_class = self._ray.remote(RankActor)
        env_vars = forwarded_env(os.environ)
        runtime_env = {"env_vars": env_vars} if env_vars else None
        for slot in rank_slots(self.tp_size, self.pp_size):
            strategy = PlacementGroupSchedulingStrategy(
                self._groups[slot.stage], placement_group_bundle_index=slot.bundle
            )
            options = actor_class.options(
                num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy,
                runtime_env=runtime_env,
            )  # fmt: skip
            self._actors.append(options.remote())

    def _reserve(self, bundles: list[dict[str, float]]) -> None:
        """The stages' placement groups, ready, or an error after
        PAGEDLLM_RAY_PLACEMENT_TIMEOUT naming what the cluster lacks."""
        from ray.util.placement_group import placement_group

        timeout = envs.ray_placement_timeout_s()
        for _ in range(self.pp_size):
            self._groups.append(placement_group(bundles, strategy=STAGE_STRATEGY))
        waits = [group.ready() for group in self._groups]
        ready, _ = self._ray.wait(waits, num_returns=len(waits), timeout=timeout)
        if len(ready) < len(waits):
            raise RuntimeError(self._unplaced_message(bundles, timeout))

    def _unplaced_message(self, bundles: list[dict[str, float]], timeout: float) -> str:
        ray = self._ray
        return (
            f"The Ray cluster did not place {self.pp_size} pipeline stage(s) of "
            f"{len(bundles)} x {bundles[0]} (each stage's tensor_parallel_size ranks on one "
            f"node) within {timeout:g} s; available: {ray.available_resources()}, total: "
            f"{ray.cluster_resources()}. Add nodes (`ray start --address=...`), lower "
            "tensor_parallel_size / pipeline_parallel_size, or raise "
            "PAGEDLLM_RAY_PLACEMENT_TIMEOUT."
        )

    def _whereabouts(self) -> list[Whereabouts]:
        refs = [actor.whereabouts.remote() for actor in self._actors]
        return self._results(refs, START_TIMEOUT_S)

    def _start(self, config: EngineConfig) -> None:
        """Rank 0 names a free port on its node; every rank joins the process group there
        and builds its runner; each answers (a failure is the answer)."""
        (port,) = self._results([self._actors[0].free_port.remote()], START_TIMEOUT_S)
        init_method = rendezvous_url([w.node_ip for w in self._where], port)
        ranks_here = ranks_on_same_node([w.node_id for w in self._where])
        refs = [
            actor.start.remote(config, rank, init_method, COLLECTIVE_TIMEOUT_S, ranks_here[rank])
            for rank, actor in enumerate(self._actors)
        ]
        self._values(refs, START_TIMEOUT_S)

    # -- the Executor contract -----------------------------------------------------------

    def execute_model(
        self,
        scheduler_output: SchedulerOutput,
        grammar_bitmask: Callable[[list[str]], GrammarBitmask | None] | None = None,
    ) -> RayStep:
        return RayStep(self._send("execute_model", *step_args(scheduler_output, grammar_bitmask)))

    def resolve(self, launched: RayStep) -> ModelRunnerOutput:
        return self._values(launched.answers, STEP_TIMEOUT_S)[self.output_rank]

    def check_health(self) -> None:
        """Raise ``WorkerDiedError`` if an actor is gone (called while idle): one ping per
        rank in flight at a time, a new round at most once a second."""
        if self._pings is not None:
            ready, _ = self._ray.wait(self._pings, num_returns=len(self._pings), timeout=0)
            self._results_of(ready, self._pings)
            if len(ready) < len(self._pings):
                return
            self._pings = None
        if time.monotonic() >= self._next_ping:
            self._pings = [actor.alive.remote() for actor in self._actors]
            self._next_ping = time.monotonic() + _PING_INTERVAL_S

    def worker_pids(self) -> list[int]:
        """The actors' process ids, each on its own node."""
        return [w.pid for w in self._where]

    def shutdown(self) -> None:
        self._finalizer()

    # -- calls ---------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, timeout: float = STEP_TIMEOUT_S) -> list[Any]:
        return self._values(self._send(method, *args), timeout)

    def _send(self, method: str, *args: Any) -> list[Any]:
        """The call pickled once (as ``mp`` does) and sent to every rank."""
        self._seq += 1
        carrier = self._carrier(pickle.dumps(Call(self._seq, method, args)))
        return [actor.answer.remote(carrier) for actor in self._actors]

    def _carrier(self, blob: bytes) -> Any:
        """A small call travels inside each actor call (Ray copies the bytes: cheaper than
        an object-store round trip for a step of a few KiB); a large one (a step with many
        new prompts) is put in the object store once and every actor reads it there."""
        return blob if len(blob) <= _INLINE_BYTES else self._ray.put(blob)

    def _values(self, refs: list[Any], timeout: float) -> list[Any]:
        replies: list[Reply] = self._results(refs, timeout)
        return values_in_rank_order(dict(enumerate(replies)), self.world_size)

    def _results(self, refs: list[Any], timeout: float) -> list[Any]:
        """Each ref's value (rank order), waited for in slices up to ``timeout``; a rank
        whose actor died is reported as soon as its result says so, not after the others
        (which may be blocked in a collective with it)."""
        deadline = time.monotonic() + timeout
        pending = list(refs)
        while pending:
            ready, pending = self._ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
            self._results_of(ready, refs)
            if pending and time.monotonic() > deadline:
                silent = [rank for rank, ref in enumerate(refs) if ref in pending]
                raise WorkerDiedError(
                    f"Worker rank(s) {silent} did not answer within {timeout:.0f} s; the "
                    "engine stops."
                )
        return self._results_of(refs, refs)

    def _results_of(self, finished: list[Any], refs: list[Any]) -> list[Any]:
        """The values of ``finished``, some of ``refs`` (one per rank, rank order); a Ray
        error (the actor died, or its answer could not be returned) is the rank's end."""
        values = []
        for ref in finished:
            try:
                values.append(self._ray.get(ref))
            except self._ray.exceptions.RayError as exc:
                raise WorkerDiedError(self._death_message(refs.index(ref), exc)) from exc
        return values

    def _death_message(self, rank: int, exc: Exception) -> str:
        where = ""
        if len(self._where) == self.world_size:
            w = self._where[rank]
            where = f" (pid {w.pid} on node {w.node_ip})"
        return (
            f"Worker rank {rank}'s Ray actor{where} failed: {type(exc).__name__}: {exc}. The "
            f"engine needs all {self.world_size} ranks for every step and stops."
        )


def _release(ray: ModuleType, actors: list[Any], groups: list[Any], owns_connection: bool) -> None:
    """Actors and placement groups gone (also at garbage collection and exit: a rank must
    never outlive its executor); the connection closed if this executor opened it."""
    from ray.util.placement_group import remove_placement_group

    if not ray.is_initialized():
        return
    for actor in actors:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor, no_restart=True)
    for group in groups:
        with contextlib.suppress(Exception):
            remove_placement_group(group)
    if owns_connection:
        ray.shutdown()
