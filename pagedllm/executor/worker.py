"""One rank's calls, whatever carries them: ``worker_proc`` (a subprocess reading ZeroMQ,
the ``mp`` backend) and ``ray_actor`` (a Ray actor, the ``ray`` backend) both hold a
``Worker`` and hand it every ``Call``; the ranks run the same code either way.

Each step a rank runs the scheduler output it is sent (the same on every rank), resolves
it at once (the CPU has nothing to overlap) and answers; a failure is answered, not
raised, so the executor decides whether it is one request's fault (every rank failed
alike) or the end of the engine.
"""

from __future__ import annotations

import logging
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.executor.messages import Call, Reply
from pagedllm.logger import init_logger
from pagedllm.sample.grammar_mask import GrammarBitmask

logger = init_logger(__name__)

METHODS = frozenset(
    {"load_model", "plan_kv_cache", "initialize_kv_cache", "execute_model", "weight_bytes",
     "decode_read_bytes", "shutdown"}
)  # fmt: skip


class Worker:
    def __init__(self, config: EngineConfig, rank: int, init_method: str, timeout_s: float) -> None:
        from pagedllm.distributed.parallel_state import init_model_parallel
        from pagedllm.worker.model_runner import ModelRunner

        parallel = config.parallel_config
        self.rank = rank
        self.parallel = init_model_parallel(
            rank, parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
            init_method, timeout_s,
        )  # fmt: skip
        self.runner = ModelRunner(config, self.parallel)

    def answer(self, call: Call) -> Reply:
        """The call run; its failure is the answer (logged here, on the rank's node)."""
        try:
            return Reply(call.seq, self.rank, True, self.call(call))
        except Exception as exc:
            logger.exception("Rank %d: %s failed", self.rank, call.method)
            return Reply(call.seq, self.rank, False, exc)

    def call(self, call: Call) -> Any:
        if call.method not in METHODS:
            raise ValueError(f"Rank {self.rank} has no method {call.method!r}.")
        if call.method == "execute_model":
            return self.execute_model(*call.args)
        if call.method == "shutdown":
            return None
        return getattr(self.runner, call.method)(*call.args)

    def execute_model(
        self,
        scheduler_output: SchedulerOutput,
        sampled_ids: list[str] | None,
        mask: GrammarBitmask | None,
    ) -> ModelRunnerOutput | None:
        grammar = None
        if mask is not None:

            def grammar(ids: list[str]) -> GrammarBitmask:
                # The executor filled the mask for the rows it expected this rank to sample.
                if ids != sampled_ids:
                    raise RuntimeError(
                        f"Rank {self.rank} samples rows {ids}, the grammar mask was made for "
                        f"{sampled_ids}."
                    )
                return mask

        launched = self.runner.execute_model(scheduler_output, grammar)
        output = self.runner.resolve(launched)
        return output if self.rank == self.parallel.output_rank else None


def prepare_rank_process(rank: int, ranks_on_this_machine: int) -> None:
    """Rank 0 speaks for all (the others only warn); ranks on one machine split its physical
    cores (unless --cpu-threads or PAGEDLLM_CPU_NUM_THREADS says, which the runner applies):
    oversubscribed ranks wait on each other in every collective."""
    import torch

    if rank != 0:
        logging.getLogger("pagedllm").setLevel(logging.WARNING)
    from pagedllm.cpu_platform import available_cpus, physical_cores

    torch.set_num_threads(max(1, physical_cores(available_cpus()) // ranks_on_this_machine))
