"""One rank of the ``ray`` backend: a Ray actor holding the same ``worker.Worker`` the
``mp`` backend's processes hold. A plain class here (Ray is optional); ``RayExecutor``
makes it an actor.

Two phases, because torch.distributed's rendezvous is rank 0's node and a port free
there, known only once every actor is placed: ``whereabouts`` (every rank, and
``free_port`` on rank 0), then ``start``; then ``answer`` for every call.
"""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

from pagedllm.config import EngineConfig
from pagedllm.executor.messages import READY_SEQ, Call, Reply
from pagedllm.executor.replies import portable
from pagedllm.executor.worker import Worker, prepare_rank_process
from pagedllm.logger import init_logger

logger = init_logger(__name__)


@dataclass(frozen=True)
class Whereabouts:
    node_ip: str
    node_id: str
    pid: int


class RankActor:
    def __init__(self) -> None:
        self._worker: Worker | None = None  # set by ``start``: the executor calls it first

    def whereabouts(self) -> Whereabouts:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        return Whereabouts(ray.util.get_node_ip_address(), node_id, os.getpid())

    def free_port(self) -> int:
        """A port free on this node now (rank 0 binds it for the rendezvous moments later;
        another process taking it between is a start-up error, not a hang)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def start(
        self, config: EngineConfig, rank: int, init_method: str, timeout_s: float,
        ranks_here: int,
    ) -> Reply:  # fmt: skip
        """Join the process group and build the rank's runner; the failure is the answer."""
        prepare_rank_process(rank, ranks_here)
        try:
            _check_model_files(config)
            self._worker = Worker(config, rank, init_method, timeout_s)
        except Exception as exc:
            logger.exception("Rank %d failed to start", rank)
            return portable(Reply(READY_SEQ, rank, False, exc))
        return Reply(READY_SEQ, rank, True)

    def answer(self, blob: bytes) -> Reply:
        """``blob``: a pickled ``Call`` from the executor (the engine core, trusted as
        ``mp``'s pipes are)."""
        call: Call = pickle.loads(blob)
        if self._worker is None:
            raise RuntimeError(f"{call.method} was sent to a rank that has not started.")
        return portable(self._worker.answer(call))

    def alive(self) -> bool:
        return True


def _check_model_files(config: EngineConfig) -> None:
    """The engine core resolved the model's paths on its own machine; every node reads them
    at the same paths (a repo id is not downloaded again here)."""
    model = config.model_config
    if model.load_format == "dummy":
        return
    files = model.files
    weights = [*files.safetensors, *([files.gguf_file] if files.gguf_file else [])]
    missing = [str(p) for p in [files.config_dir, *weights] if not Path(p).exists()]
    if missing:
        import ray

        raise FileNotFoundError(
            f"The model's files are missing on node {ray.util.get_node_ip_address()}: "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. Every node of "
            "the Ray cluster needs the model at the same path as the node that runs "
            "`pagedllm serve` (a shared file system, or a copy)."
        )
