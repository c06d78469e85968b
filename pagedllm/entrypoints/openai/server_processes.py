"""``--api-server-count N``: N API server processes sharing one engine core.

For high request rates the HTTP side (JSON, SSE, detokenization) can need more than one
interpreter. The supervising process binds the listening socket, starts the engine core
with one output socket per API server, then starts N API servers
(``python -m pagedllm.entrypoints.openai.server_processes``), each handed the socket (the
kernel spreads connections across them) and its ``EngineConnection`` on stdin. SIGTERM is
forwarded: each server drains on its own; once all have exited the engine is stopped. If
the engine or a server dies, the others are stopped and the supervisor exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType

from pagedllm.config import EngineConfig
from pagedllm.engine.core_client import MPClient
from pagedllm.engine.engine_process import PendingEngine, remove_addresses
from pagedllm.engine.exceptions import describe_exit
from pagedllm.executor.parent_watch import module_argv, spawn_owned
from pagedllm.logger import init_logger
from pagedllm.metrics.prometheus import multiprocess_dir

logger = init_logger(__name__)


@dataclass(frozen=True)
class EngineConnection:
    """How one API server reaches the shared engine core."""

    input_address: str
    output_address: str
    engine_pid: int
    client_index: int
    listen_fd: int

    def client(self) -> MPClient:
        """Connect and wait for the engine to report in."""
        client = MPClient(
            self.input_address, self.output_address, None, self.engine_pid, self.client_index
        )
        client.wait_started()
        return client


def run_api_servers(
    args: argparse.Namespace, config: EngineConfig, listen_fd: int, pending: PendingEngine | None
) -> int:
    """Supervise the engine core (in ``pending`` if launched early, with an output for each
    server) and ``args.api_server_count`` API servers until they end."""
    count = args.api_server_count
    pending = pending or PendingEngine.launch(count)
    input_address, outputs = pending.input_address, pending.output_addresses
    engine = pending.configure(config)
    # One metrics directory for the servers' processes (prometheus_client's multiprocess
    # mode), so each /metrics reports all of them; the operator's own if set.
    metrics_dir = multiprocess_dir() or tempfile.mkdtemp(prefix="pagedllm-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    args = server_args(args, config)
    servers = [
        _start_server(
            args, EngineConnection(input_address, outputs[i], engine.pid, i, listen_fd), env
        )
        for i in range(count)
    ]
    logger.info("Started %d API server processes sharing engine core %d", count, engine.pid)
    stopping = _forward_signals(servers)
    try:
        return _supervise(engine, servers, stopping)
    finally:
        for server in servers:
            _stop(server)
        _stop(engine)
        remove_addresses([input_address, *outputs])
        if multiprocess_dir() is None:  # ours: the values die with the servers
            shutil.rmtree(metrics_dir, ignore_errors=True)


def server_args(args: argparse.Namespace, config: EngineConfig) -> argparse.Namespace:
    """The API servers' arguments, with the dtype the engine core runs: each server builds
    its config again from them, and ``--dtype auto`` on the CPU is decided by timing a
    product (``config.resolve_dtype``), which a server need not repeat nor could be
    trusted to decide alike."""
    return argparse.Namespace(**{**vars(args), "dtype": config.model_config.dtype})


def _start_server(
    args: argparse.Namespace, connection: EngineConnection, env: dict[str, str]
) -> subprocess.Popen:
    # Its own session: a terminal's Ctrl-C reaches the supervisor alone, which forwards it
    # once (a second signal would cut the server's drain short).
    process = spawn_owned(
        module_argv("pagedllm.entrypoints.openai.server_processes"),
        stdin=subprocess.PIPE,
        pass_fds=(connection.listen_fd,),
        env=env,
    )
    assert process.stdin is not None
    # Kept open: its end tells the server that its supervisor is gone.
    process.stdin.write(pickle.dumps((args, connection)))
    process.stdin.flush()
    return process


def _forward_signals(servers: list[subprocess.Popen]) -> list[bool]:
    stopping = [False]

    def forward(sig: int, frame: FrameType | None) -> None:
        for server in servers:
            if server.poll() is None:
                server.send_signal(sig if not stopping[0] else signal.SIGKILL)
        stopping[0] = True

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return stopping


def _supervise(
    engine: subprocess.Popen, servers: list[subprocess.Popen], stopping: list[bool]
) -> int:
    while True:
        if all(server.poll() is not None for server in servers):
            return 0 if stopping[0] and all(s.returncode == 0 for s in servers) else 1
        if engine.poll() is not None and not stopping[0]:
            logger.error("The engine core %s; stopping the API servers",
                         describe_exit(engine.returncode))  # fmt: skip
            return 1
        if not stopping[0] and any(s.poll() is not None for s in servers):
            logger.error("An API server exited; stopping the others")
            return 1
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    if process.stdin is not None:
        process.stdin.close()  # the engine and the servers exit when their stdin ends
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    """An API server of ``--api-server-count``: its arguments and connection on stdin."""
    from pagedllm.engine.core_proc import exit_with_parent
    from pagedllm.entrypoints.openai.api_server import run_server

    args, connection = pickle.load(sys.stdin.buffer)
    exit_with_parent(sys.stdin.fileno())
    sys.exit(run_server(args, connection))


if __name__ == "__main__":
    main()
