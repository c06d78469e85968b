"""Executors: how the engine core runs the model on one rank or many (``base.Executor``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedllm.config import EngineConfig

if TYPE_CHECKING:  # base imports torch; the front end imports parent_watch from this package
    from pagedllm.executor.base import Executor


def create_executor(config: EngineConfig) -> Executor:
    """``ray``: one Ray actor per rank, even one (it may run on another node of the
    cluster). Otherwise the ``ModelRunner`` itself on one rank (nothing added), worker
    processes, one per rank, for tensor or pipeline parallelism."""
    parallel = config.parallel_config
    if parallel.distributed_executor_backend == "ray":
        from pagedllm.executor.ray_executor import RayExecutor

        return RayExecutor(config)
    if parallel.tensor_parallel_size * parallel.pipeline_parallel_size == 1:
        from pagedllm.worker.model_runner import ModelRunner

        return ModelRunner(config)
    if parallel.distributed_executor_backend != "mp":
        raise ValueError(
            f"distributed_executor_backend={parallel.distributed_executor_backend!r} has no "
            "executor; use 'mp' or 'ray'."
        )
    from pagedllm.executor.multiproc import MultiprocExecutor

    return MultiprocExecutor(config)
