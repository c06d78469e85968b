"""One rank: a worker process started by ``MultiprocExecutor``, serving calls until told
to stop or until its parent (the engine core) is gone.

    python -m pagedllm.executor.worker_proc   (WorkerArgs pickled on stdin)

Each step it runs the scheduler output it is sent (the same on every rank), resolves it at
once (the CPU has nothing to overlap) and answers; a failure is answered, not raised, so
the executor decides whether it is one request's fault (every rank failed alike) or the
end of the engine.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from typing import Any

import zmq

from pagedllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.executor.messages import READY_SEQ, Call, Reply, WorkerArgs
from pagedllm.executor.parent_watch import exit_with_parent
from pagedllm.logger import init_logger
from pagedllm.sample.grammar_mask import GrammarBitmask

logger = init_logger(__name__)

METHODS = frozenset(
    {"load_model", "plan_kv_cache", "initialize_kv_cache", "execute_model", "weight_bytes",
     "decode_read_bytes", "shutdown"}
)  # fmt: skip


class Worker:
    def __init__(self, args: WorkerArgs) -> None:
        from pagedllm.distributed.parallel_state import init_model_parallel
        from pagedllm.worker.model_runner import ModelRunner

        parallel = args.config.parallel_config
        self.rank = args.rank
        self.parallel = init_model_parallel(
            args.rank, parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
            args.init_method, args.timeout_s,
        )  # fmt: skip
        self.runner = ModelRunner(args.config, self.parallel)

    def call(self, call: Call) -> Any:
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


def serve(args: WorkerArgs) -> None:
    context = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.connect(args.inbox_address)
    results = context.socket(zmq.PUSH)
    results.connect(args.results_address)
    try:
        worker = Worker(args)
    except Exception as exc:
        logger.exception("Rank %d failed to start", args.rank)
        results.send(_encode(Reply(READY_SEQ, args.rank, False, exc)))
        return
    results.send(_encode(Reply(READY_SEQ, args.rank, True)))
    while True:
        call: Call = pickle.loads(inbox.recv())
        try:
            reply = Reply(call.seq, args.rank, True, worker.call(call))
        except Exception as exc:
            logger.exception("Rank %d: %s failed", args.rank, call.method)
            reply = Reply(call.seq, args.rank, False, exc)
        results.send(_encode(reply))
        if call.method == "shutdown":
            break
    results.close(linger=1000)
    inbox.close(linger=0)
    context.term()


def _encode(reply: Reply) -> bytes:
    """Pickled; an exception that does not pickle travels as a RuntimeError of its text."""
    try:
        return pickle.dumps(reply)
    except Exception:
        error = RuntimeError(f"{type(reply.value).__name__}: {reply.value}")
        return pickle.dumps(Reply(reply.seq, reply.rank, reply.ok, error))


def _share_cores(world_size: int) -> None:
    """Ranks on one machine split its cores (unless PAGEDLLM's thread count is set, which
    the runner applies): oversubscribed ranks wait on each other in every collective."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


def main() -> None:
    args: WorkerArgs = pickle.load(sys.stdin.buffer)
    exit_with_parent(sys.stdin.fileno())
    if args.rank != 0:  # rank 0 speaks for all; the others only warn
        logging.getLogger("pagedllm").setLevel(logging.WARNING)
    _share_cores(args.config.parallel_config.tensor_parallel_size
                 * args.config.parallel_config.pipeline_parallel_size)  # fmt: skip
    serve(args)


if __name__ == "__main__":
    main()
