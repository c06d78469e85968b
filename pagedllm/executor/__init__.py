"""Executors: how the engine core runs the model on one rank or many (``base.Executor``)."""

from __future__ import annotations

from pagedllm.config import EngineConfig
from pagedllm.executor.base import Executor


def create_executor(config: EngineConfig) -> Executor:
    """The ``ModelRunner`` itself on one rank (today's path, nothing added); worker
    processes, one per rank, for tensor or pipeline parallelism."""
    parallel = config.parallel_config
    if parallel.tensor_parallel_size * parallel.pipeline_parallel_size == 1:
        from pagedllm.worker.model_runner import ModelRunner

        return ModelRunner(config)
    if parallel.distributed_executor_backend != "mp":
        raise ValueError(
            f"distributed_executor_backend={parallel.distributed_executor_backend!r} has no "
            "executor; use 'mp'."
        )
    from pagedllm.executor.multiproc import MultiprocExecutor

    return MultiprocExecutor(config)
