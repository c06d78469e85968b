"""EngineCore: the scheduler and the executor (the model runner, or one worker process per
rank with tensor or pipeline parallelism), stepped together."""

from __future__ import annotations

import logging
import time
from operator import attrgetter
from typing import Any

from pagedllm import envs
from pagedllm.config import EngineConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import FinishReason, GrammarError, Request, RequestStatus
from pagedllm.core.scheduler import Scheduler
from pagedllm.core.scheduler_output import EngineCoreOutput, SchedulerOutput
from pagedllm.engine.messages import EngineCoreRequest
from pagedllm.executor import create_executor
from pagedllm.executor.base import Executor
from pagedllm.executor.errors import EngineFatalError
from pagedllm.inputs.tokenizer import load_tokenizer
from pagedllm.logger import init_logger
from pagedllm.metrics.stats import EngineSnapshot, IterationStats
from pagedllm.sample.grammar_mask import GrammarBitmask
from pagedllm.structured_output.manager import StructuredOutputManager
from pagedllm.worker.kv_cache import GiB

logger = init_logger(__name__)

_new_token_ids = attrgetter("new_token_ids")

# EngineCore methods the front end may call by name (``EngineCoreClient.call_utility``).
UTILITIES = frozenset(
    {
        "reset_prefix_cache",
        "kv_cache_state",
        "weight_bytes",
        "decode_read_bytes",
        "worker_pids",
        "cpu_placement",
    }
)


def is_device_failure(exc: BaseException) -> bool:
    """A CUDA error (an illegal address, a device-side assert) leaves the context unusable
    for every request, and so does an ``EngineFatalError`` (a lost worker rank, a failed
    host-tier copy); anything else a step raises is tried as one request's fault."""
    import torch

    if isinstance(exc, EngineFatalError):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and "CUDA error" in str(exc)


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        start = time.perf_counter()
        self.config = config
        self.runner: Executor = create_executor(config)
        self.runner.load_model()
        plan = self.runner.plan_kv_cache()
        self.runner.initialize_kv_cache(plan)
        max_len = config.model_config.max_model_len
        parallel = config.parallel_config
        ranks = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
        # With several ranks the figures are per rank: each holds its share of the KV heads
        # (and its stage's layers) for the same blocks, so the block count is the engine's.
        logger.info(
            "KV cache%s: %d blocks of %d tokens (%d tokens), %.2f GiB in %s",
            f" per rank (each of {ranks} ranks)" if ranks > 1 else "",
            plan.num_blocks,
            plan.block_size,
            plan.num_tokens,
            plan.num_bytes / GiB,
            str(self.runner.kv_cache_dtype).removeprefix("torch."),
        )
        logger.info(
            "Maximum concurrency for %d tokens per request: %.2fx",
            max_len,
            plan.max_concurrency(max_len),
        )
        if plan.num_host_blocks:
            logger.info(
                "Host KV tier (swap_space)%s: %d blocks (%d tokens), %.2f GiB of %s host "
                "memory; preemption by %s",
                " per rank" if ranks > 1 else "",
                plan.num_host_blocks,
                plan.num_host_blocks * plan.block_size,
                plan.num_host_bytes / GiB,
                "pinned" if config.device == "cuda" else "plain",
                config.scheduler_config.preemption_mode,
            )
        self.kv_cache_plan = plan
        cache = config.cache_config
        self.kv_cache_manager = KVCacheManager(
            plan.num_blocks, cache.block_size, cache.enable_prefix_caching, plan.num_host_blocks,
            plan.save_ahead_blocks(config.device),
        )  # fmt: skip
        self.scheduler = Scheduler(config.scheduler_config, self.kv_cache_manager, max_len)
        self._debug_integrity = envs.debug_integrity_checks()
        # Made when the first request with structured outputs arrives.
        self.structured_outputs: StructuredOutputManager | None = None
        # Async scheduling: the step queued on the device whose tokens are not read yet.
        self._in_flight: tuple[SchedulerOutput, Any] | None = None
        # A step scheduled but not launched yet: its launch would block on the device, so
        # the step before it was resolved and its outputs returned first (``_step``).
        self._pending_launch: _PendingLaunch | None = None
        self._phase_ms = (0.0, 0.0, 0.0)  # the last step's schedule, launch, wait
        logger.info("Engine core ready in %.2f s", time.perf_counter() - start)

    def add_request(self, request: EngineCoreRequest) -> None:
        """Schedule one sequence. Its input was validated by the front end; its grammar, if
        any, is built and compiled off this loop (one that no longer builds ends the request
        with an error when it comes up to be scheduled). A failure here is a ValueError for
        that request alone."""
        params = request.sampling_params
        core_request = Request(
            request.request_id, request.prompt_token_ids, params, request.eos_token_id,
            request.arrival_time, request.priority, request.cache_salt,
        )  # fmt: skip
        if params.structured_outputs is not None:
            core_request.structured_output = self._structured_outputs(
                request.eos_token_id
            ).request_grammar(params.structured_outputs)
        self.scheduler.add_request(core_request)

    def try_add_request(self, request: EngineCoreRequest) -> EngineCoreOutput | None:
        """``add_request``, with a failure (the request's own) returned as its final
        output (finish reason "error") instead of raised."""
        try:
            self.add_request(request)
        except GrammarError as exc:  # its constraint failed before, or the fills are saturated
            logger.warning("Request %s refused: %s", request.request_id, exc)
            return EngineCoreOutput(
                request.request_id, [], FinishReason.ERROR, error=str(exc), error_cause=exc.cause
            )
        except Exception as exc:
            logger.exception("Request %s could not be added", request.request_id)
            error = f"{type(exc).__name__}: {exc}"
            return EngineCoreOutput(request.request_id, [], FinishReason.ERROR, error=error)
        return None

    def call_utility(self, name: str, *args: Any) -> Any:
        """One of ``UTILITIES``, by name (the front end's remote calls)."""
        if name not in UTILITIES:
            raise ValueError(f"Unknown engine utility {name!r}.")
        return getattr(self, name)(*args)

    def _structured_outputs(self, eos_token_id: int | None) -> StructuredOutputManager:
        """Made on first use (with the engine's own tokenizer), so engines that never
        constrain output never import xgrammar."""
        if self.structured_outputs is None:
            model_config = self.config.model_config
            eos = model_config.generation_config.get("eos_token_id")
            stops = {eos_token_id} | set([eos] if isinstance(eos, int) else eos or [])
            self.structured_outputs = StructuredOutputManager(
                load_tokenizer(model_config),
                model_config.vocab_size,
                sorted(t for t in stops if t is not None),
                pin_memory=self.config.device == "cuda",
            )
        return self.structured_outputs

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    # -- utilities (called by name from the front end: ``UTILITIES``) ---------------------

    def cpu_placement(self) -> tuple[int, list[int]]:
        """torch's intra-op threads in this process and the CPUs it may run on (as the
        runner set them from --cpu-threads and VLLM_CPU_OMP_THREADS_BIND)."""
        import os

        import torch

        return torch.get_num_threads(), sorted(os.sched_getaffinity(0))

    def weight_bytes(self) -> int:
        """Bytes of the model's weights on the devices, every rank's (benchmarks relate speed
        to them)."""
        return self.runner.weight_bytes()

    def decode_read_bytes(self) -> int:
        """Weight bytes one decode step reads: all but the embedding table, of which it reads
        a row per token (unless the LM head shares it). The roofline of a single stream."""
        return self.runner.decode_read_bytes()

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (none when the model runs in this process)."""
        pids = getattr(self.runner, "worker_pids", None)
        return pids() if pids is not None else []

    def check_health(self) -> None:
        """Raise if a worker process is gone (called while idle, so a lost rank ends the
        engine even when no step would notice it)."""
        check = getattr(self.runner, "check_health", None)
        if check is not None:
            check()

    def shutdown(self) -> None:
        self.runner.shutdown()

    def kv_cache_state(self) -> dict[str, Any]:
        """The block pool checked: free and total blocks, whether a trial is running."""
        kv = self.kv_cache_manager
        pool = kv.block_pool
        kv.check_integrity()
        return {
            "num_free_blocks": pool.get_num_free_blocks(),
            "num_blocks": pool.num_blocks,
            "num_host_blocks": kv.host_tier.num_slots if kv.host_tier is not None else 0,
            "num_host_blocks_used": kv.host_tier.num_used if kv.host_tier is not None else 0,
            "quarantine_active": self.scheduler.quarantine.active,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_unfinished": self.scheduler.get_num_unfinished_requests(),
        }

    def has_unfinished_requests(self) -> bool:
        return self._pending_launch is not None or self.scheduler.has_unfinished_requests()

    def step(self) -> tuple[list[EngineCoreOutput], IterationStats]:
        """Schedule, run, update. Returns what changed and what was computed (with the
        step's wall time: in steady state, the device's time per step)."""
        start = time.perf_counter()
        pending = self._pending_launch
        outputs, iteration = self._step()
        if self._pending_launch is None:  # a whole step: from its schedule to its launch
            began = pending.began if pending is not None else start
            iteration.step_seconds = time.perf_counter() - began
        if logger.isEnabledFor(logging.DEBUG) and self._pending_launch is not None:
            logger.debug("Outputs sent early at %.3f, %d tokens sampled; schedule and "
                         "resolve %.2f ms (the next launch blocks)", time.time(),
                         iteration.num_generation_tokens, self._phase_ms[0])  # fmt: skip
        elif logger.isEnabledFor(logging.DEBUG):
            # Wall clock (ms resolution) and duration: to line steps up with a client's
            # inter-token gaps (benchmarks/serving.py --step-trace).
            logger.debug("Step ended at %.3f after %.2f ms, %d tokens sampled; "
                         "schedule %.2f ms, launch %.2f ms, wait for the last %.2f ms",
                         time.time(), 1e3 * iteration.step_seconds,
                         iteration.num_generation_tokens, *self._phase_ms)  # fmt: skip
        return outputs, iteration

    def _step(self) -> tuple[list[EngineCoreOutput], IterationStats]:
        """With async scheduling, step N+1 is scheduled and queued before step N's tokens are
        read back, so the host's work (scheduling, input preparation, output processing)
        overlaps the device's; the outputs returned are then those of step N. Requests
        that need each token on the host first (``needs_known_tokens``) make the steps
        synchronous while they run."""
        outputs: list[EngineCoreOutput] = []
        if self._pending_launch is not None:
            held, self._pending_launch = self._pending_launch, None
            scheduler_output, grammar, began = held.so, held.grammar, held.began
            scheduled = time.perf_counter()
        else:
            if self._in_flight is not None and not self._may_run_ahead():
                outputs = self._finish_in_flight()
            if not self.scheduler.has_unfinished_requests():
                if not outputs:
                    self._idle()
                return outputs, self._iteration_stats(None, outputs)
            began = time.perf_counter()
            scheduler_output = self.scheduler.schedule()
            grammar = self._grammar_bitmask if self._has_grammars(scheduler_output) else None
            if self._in_flight is not None and self.runner.launch_blocks(scheduler_output):
                # The step in flight is resolved and its outputs returned now, not after a
                # launch that waits for the device; the next call launches this one.
                outputs += self._finish_in_flight()
                self._pending_launch = _PendingLaunch(scheduler_output, grammar, began)
                self._phase_ms = (1e3 * (time.perf_counter() - began), 0.0, 0.0)
                return outputs, self._iteration_stats(None, outputs)
            scheduled = time.perf_counter()
        try:
            launched = self.runner.execute_model(scheduler_output, grammar)
        except Exception as exc:
            if self._in_flight is not None:
                outputs += self._finish_in_flight()
            outputs += self._fail_step(scheduler_output, exc)
            return outputs, self._iteration_stats(None, outputs)
        queued = time.perf_counter()
        if self._in_flight is not None:
            outputs += self._finish_in_flight()
        # Where the step's wall time went, for the DEBUG step trace.
        self._phase_ms = (1e3 * (scheduled - began), 1e3 * (queued - scheduled),
                          1e3 * (time.perf_counter() - queued))  # fmt: skip
        if self._may_run_ahead() and not scheduler_output.is_empty:
            self._in_flight = (scheduler_output, launched)
        else:
            outputs += self._resolve(scheduler_output, launched)
        if scheduler_output.is_empty and not outputs:
            # Everything waiting is still compiling its grammar: yield to the compile.
            time.sleep(0.001)
        return outputs, self._iteration_stats(scheduler_output, outputs)

    def _may_run_ahead(self) -> bool:
        return (
            self.config.scheduler_config.async_scheduling
            and self.scheduler.num_sync_requests == 0
            and not self.scheduler.quarantine.active  # trials run step by step
            and self.scheduler.has_unfinished_requests()
        )

    def _finish_in_flight(self) -> list[EngineCoreOutput]:
        assert self._in_flight is not None
        scheduler_output, launched = self._in_flight
        self._in_flight = None
        return self._resolve(scheduler_output, launched)

    def _resolve(self, so: SchedulerOutput, launched: Any) -> list[EngineCoreOutput]:
        try:
            runner_output = self.runner.resolve(launched)
        except Exception as exc:
            return self._fail_step(so, exc)
        self.scheduler.observe_step(so)
        return self.scheduler.update_from_output(so, runner_output)

    def _fail_step(self, so: SchedulerOutput, exc: Exception) -> list[EngineCoreOutput]:
        """A step raised: find the request(s) that caused it and fail only those, unless
        the device itself is broken (then the engine stops: nothing can run)."""
        if is_device_failure(exc):
            raise exc
        logger.exception(
            "A step of %d request(s) failed; finding the request that caused it",
            len(so.num_scheduled_tokens),
        )
        return self.scheduler.fail_step(so, f"{type(exc).__name__}: {exc}")

    def _has_grammars(self, so: SchedulerOutput) -> bool:
        if self.scheduler.num_sync_requests == 0:
            return False  # a request with a grammar counts among them: none, no scan
        requests = self.scheduler.requests
        return any(requests[rid].structured_output is not None for rid in so.num_scheduled_tokens)

    def _grammar_bitmask(self, req_ids: list[str]) -> GrammarBitmask | None:
        """Called by the runner, while the forward pass runs, with the sampled rows' ids."""
        assert self.structured_outputs is not None
        requests = self.scheduler.requests
        grammars = [requests[rid].structured_output for rid in req_ids]
        return self.structured_outputs.fill_bitmask(grammars)  # type: ignore[arg-type]

    def snapshot(self) -> EngineSnapshot:
        stats = self.scheduler.stats()
        prefix = self.kv_cache_manager.prefix_cache_stats.take()
        kv = self.kv_cache_manager
        return EngineSnapshot(
            stats.num_running, stats.num_waiting, stats.kv_cache_usage, prefix.queries,
            prefix.hits, stats.num_waiting_deferred, kv.host_tier is not None, kv.host_usage(),
            prefix.host_queries, prefix.host_hits,
        )  # fmt: skip

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.reset_prefix_cache()

    def _iteration_stats(
        self, so: SchedulerOutput | None, outputs: list[EngineCoreOutput]
    ) -> IterationStats:
        # Both sums run over every request every step: map() with C-level functions.
        generated = sum(map(len, map(_new_token_ids, outputs)))
        if so is None:
            return IterationStats(num_generation_tokens=generated)
        # Every scheduled token is either a prompt/recompute token or the input of a decode
        # step; a decode step's input is the previously sampled token.
        counts = so.num_scheduled_tokens
        decodes = len(counts) if so.is_all_decodes else list(counts.values()).count(1)
        if logger.isEnabledFor(logging.DEBUG):  # the scheduler's decisions, once a step
            state = self.scheduler.stats()
            logger.debug(
                "Step: %d requests (%d new), %d tokens (%d prompt, %d decode), %d preempted, "
                "%d finished; %d running, %d waiting, KV cache %.1f%% used",
                len(so.num_scheduled_tokens), len(so.scheduled_new_reqs),
                so.total_num_scheduled_tokens, so.total_num_scheduled_tokens - decodes, decodes,
                len(so.preempted_req_ids), len(so.finished_req_ids), state.num_running,
                state.num_waiting, 100 * state.kv_cache_usage,
            )  # fmt: skip
        return IterationStats(
            num_prompt_tokens=so.total_num_scheduled_tokens - decodes,
            num_generation_tokens=generated,
            num_preempted=len(so.preempted_req_ids),
        )

    def _idle(self) -> None:
        if self._debug_integrity:
            self.kv_cache_manager.check_integrity()


class _PendingLaunch:
    """A scheduled step held back one ``EngineCore.step`` call so that the outputs of the
    step before it leave first (``Executor.launch_blocks``). Safe while held: requests
    aborted or finished meanwhile still run in it (as they would in a step already
    launched), and their blocks are reused only by a later schedule, which comes after
    this launch; the scheduler ignores their tokens."""

    def __init__(self, so: SchedulerOutput, grammar: Any, began: float) -> None:
        self.so, self.grammar, self.began = so, grammar, began
