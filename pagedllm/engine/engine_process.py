"""Starting the engine core's process (``python -m pagedllm.engine.core_proc``), early.

Start-up is two slow halves in two processes: this one builds the configuration
(``EngineArgs.create_engine_config`` imports transformers to read the model's config), and
the engine process imports torch and transformers before it builds anything. They used to
run one after the other. ``start_early`` launches the engine process first, so its imports
overlap the configuration; the configuration then goes to its stdin (``PendingEngine.
configure``), which the process reads once its imports are done.

Invariant: an engine process reads exactly one pickled ``EngineConfig`` from its stdin, and
the pipe stays open for the parent's life: its end before the config (a configuration
error here) makes the process exit quietly, its end afterwards makes the engine stop.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pagedllm import envs
from pagedllm.config import EngineConfig
from pagedllm.executor.parent_watch import spawn_owned
from pagedllm.logger import init_logger

logger = init_logger(__name__)

T = TypeVar("T")


def engine_addresses(num_clients: int) -> tuple[str, list[str]]:
    """IPC endpoints for one engine: its input, and one output per front end."""
    base = os.path.join(tempfile.gettempdir(), f"pagedllm-{uuid.uuid4().hex[:12]}")
    return f"ipc://{base}-in", [f"ipc://{base}-out{i}" for i in range(num_clients)]


@dataclass
class PendingEngine:
    """An engine process started before its configuration: importing, then waiting for the
    config on its stdin."""

    input_address: str
    output_addresses: list[str]
    process: subprocess.Popen
    configured: bool = False

    @classmethod
    def launch(cls, num_clients: int = 1) -> PendingEngine:
        input_address, outputs = engine_addresses(num_clients)
        process = spawn_owned(
            [sys.executable, "-m", "pagedllm.engine.core_proc", input_address, *outputs],
            stdin=subprocess.PIPE,
        )
        logger.info("Engine core process started (pid %d)", process.pid)
        return cls(input_address, outputs, process)

    def configure(self, config: EngineConfig) -> subprocess.Popen:
        """Send the configuration: the process builds the engine from it. The pipe stays
        open for this process's life: its end (even a kill) tells the engine to stop."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))
        stdin.flush()
        self.configured = True
        return self.process

    def cancel(self) -> None:
        """Stop the process if it never got its configuration (it has built nothing);
        once configured, the client that configured it owns it."""
        if self.configured:
            return
        self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()


def start_early(build: Callable[[], T], num_clients: int = 1) -> tuple[T, PendingEngine | None]:
    """``build()`` (the configuration) with the engine process launched first, where the
    engine runs in its own process (``PAGEDLLM_ENABLE_MULTIPROCESSING``, the default); the
    process is stopped if ``build`` raises."""
    pending = PendingEngine.launch(num_clients) if envs.enable_multiprocessing() else None
    with cancelled_on_error(pending):
        return build(), pending


@contextlib.contextmanager
def cancelled_on_error(pending: PendingEngine | None) -> Iterator[None]:
    """Stop ``pending`` if the block raises before it was configured."""
    try:
        yield
    except BaseException:
        if pending is not None:
            pending.cancel()
        raise
