"""The front end's handle on the engine core: in its own process (default) or in this one.

Both clients speak in ``messages.py`` types: ``add_request(EngineCoreRequest)``,
``abort_requests(ids)``, ``get_outputs()`` (the next step's ``EngineCoreOutputs``, or None when
woken or timed out), ``call_utility(name, *args)``. Each is used from one thread at a time
(the thread that owns the front end's output processing).

- ``MPClient``: the core runs in ``python -m pagedllm.engine.core_proc``; requests go over a
  ZeroMQ PUSH socket, outputs come back on a PULL socket this client binds. The engine's
  death is noticed within a second (``EngineDeadError``), never a hang.
- ``InprocClient``: the core lives here and ``get_outputs`` runs a step on the calling thread
  (``PAGEDLLM_ENABLE_MULTIPROCESSING=0``: for debugging, and for tests that reach into the
  engine).
"""

from __future__ import annotations

import collections
import itertools
import os
import select
import subprocess
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from pagedllm import envs
from pagedllm.config import EngineConfig
from pagedllm.core.scheduler_output import EngineCoreOutput
from pagedllm.engine.engine_process import PendingEngine, remove_addresses
from pagedllm.engine.exceptions import EngineDeadError, describe_exit
from pagedllm.engine.messages import (
    Abort,
    Codec,
    EngineCoreOutputs,
    EngineCoreRequest,
    Shutdown,
    Started,
    UtilityCall,
    UtilityResult,
)
from pagedllm.logger import init_logger
from pagedllm.metrics.stats import IterationStats

if TYPE_CHECKING:
    from pagedllm.engine.core import EngineCore

logger = init_logger(__name__)

_LIVENESS_S = 1.0  # how often a waiting client checks that the engine is alive


class EngineCoreClient(Protocol):
    def add_request(self, request: EngineCoreRequest) -> None: ...
    def abort_requests(self, request_ids: list[str]) -> None: ...
    def get_outputs(
        self, wake_fd: int | None = None, timeout: float | None = None
    ) -> EngineCoreOutputs | None: ...
    def call_utility(self, name: str, *args: Any) -> Any: ...
    def is_alive(self) -> bool: ...
    def shutdown(self) -> None: ...
    def wait_started(self) -> object: ...


def make_client(config: EngineConfig, pending: PendingEngine | None = None) -> EngineCoreClient:
    """The engine core for ``config``: in ``pending`` (an engine process launched early,
    ``engine_process.start_early``), else in a process started now, or in this process
    (``PAGEDLLM_ENABLE_MULTIPROCESSING=0``). An engine process may still be building it:
    ``wait_started()`` before the first request."""
    if pending is not None or envs.enable_multiprocessing():
        return MPClient.start(config, pending)
    return InprocClient(config)


class InprocClient:
    """The engine core in this process; a step runs when outputs are asked for."""

    def __init__(self, config: EngineConfig) -> None:
        from pagedllm.engine.core import EngineCore  # torch: only where the core runs here

        self.engine_core: EngineCore = EngineCore(config)
        self._failed: list[EngineCoreOutput] = []
        self._changed = False

    def add_request(self, request: EngineCoreRequest) -> None:
        self._changed = True
        failed = self.engine_core.try_add_request(request)
        if failed is not None:
            self._failed.append(failed)

    def abort_requests(self, request_ids: list[str]) -> None:
        self._changed = True
        self.engine_core.abort_requests(request_ids)

    def get_outputs(
        self, wake_fd: int | None = None, timeout: float | None = None
    ) -> EngineCoreOutputs | None:
        core = self.engine_core
        if self._failed:
            failed, self._failed = self._failed, []
            return EngineCoreOutputs(failed, IterationStats(), core.snapshot())
        if core.has_unfinished_requests():
            outputs, iteration = core.step()
            self._changed = False
            return EngineCoreOutputs(outputs, iteration, core.snapshot())
        if self._changed:  # idle since: report the state (KV usage back to zero)
            self._changed = False
            return EngineCoreOutputs([], IterationStats(), core.snapshot())
        if wake_fd is not None:
            select.select([wake_fd], [], [], timeout)
        return None

    def call_utility(self, name: str, *args: Any) -> Any:
        return self.engine_core.call_utility(name, *args)

    def is_alive(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass

    def wait_started(self) -> None:
        """Nothing to wait for: the core was built in ``__init__``."""


class MPClient:
    """The engine core in its own process, over ZeroMQ."""

    def __init__(
        self,
        input_address: str,
        output_address: str,
        process: subprocess.Popen | None,
        engine_pid: int,
        client_index: int = 0,
    ) -> None:
        self.codec = Codec()
        self.context = zmq.Context()
        self.output = self.context.socket(zmq.PULL)
        self.output.setsockopt(zmq.LINGER, 0)  # closing never waits on an engine that is gone
        self.output.bind(output_address)
        self.input = self.context.socket(zmq.PUSH)
        self.input.setsockopt(zmq.LINGER, 0)
        self.input.connect(input_address)
        self.process = process  # None for a client that did not start the engine
        self.engine_pid = engine_pid
        self.client_index = client_index
        self._addresses = (input_address, output_address)
        # A client dropped without shutdown() (an LLM garbage-collected) still stops its
        # engine and frees its sockets.
        self._finalizer = weakref.finalize(
            self, _release, self.context, [self.input, self.output], self._addresses, [process]
        )
        self._pending: collections.deque[EngineCoreOutputs] = collections.deque()
        self._results: dict[int, UtilityResult] = {}
        self._call_ids = itertools.count()
        self._dead = False

    @classmethod
    def start(cls, config: EngineConfig, pending: PendingEngine | None = None) -> MPClient:
        """Start the engine process (or configure ``pending``, launched while the config
        was built: ``engine_process.start_early``) and connect this client to it; the
        engine is built meanwhile (``wait_started``)."""
        pending = pending or PendingEngine.launch()
        # Bound before the engine connects (it does once it has its config).
        client = cls(pending.input_address, pending.output_addresses[0], None, 0)
        process = pending.configure(config)
        client.process, client.engine_pid = process, process.pid
        client._finalizer.detach()
        client._finalizer = weakref.finalize(
            client, _release, client.context, [client.input, client.output],
            client._addresses, [process],
        )  # fmt: skip
        return client

    # -- the protocol --------------------------------------------------------------------

    def add_request(self, request: EngineCoreRequest) -> None:
        request.client_index = self.client_index
        self._send(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        if request_ids:
            self._send(Abort(request_ids))

    def get_outputs(
        self, wake_fd: int | None = None, timeout: float | None = None
    ) -> EngineCoreOutputs | None:
        """The next outputs; None when ``wake_fd`` turns readable or ``timeout`` passes."""
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._receive(wake_fd, deadline)
            if message is None or isinstance(message, EngineCoreOutputs):
                return message
            if isinstance(message, UtilityResult):
                self._results[message.call_id] = message

    def call_utility(self, name: str, *args: Any) -> Any:
        call_id = next(self._call_ids)
        self._send(UtilityCall(call_id, name, list(args), self.client_index))
        while call_id not in self._results:
            message = self._receive(None, None)
            if isinstance(message, EngineCoreOutputs):
                self._pending.append(message)
            elif isinstance(message, UtilityResult):
                self._results[message.call_id] = message
        result = self._results.pop(call_id)
        if result.error is not None:
            raise RuntimeError(f"Engine utility {name!r} failed: {result.error}")
        return result.result

    def is_alive(self) -> bool:
        if self._dead:
            return False
        if self.process is not None:
            return self.process.poll() is None
        try:
            os.kill(self.engine_pid, 0)
        except ProcessLookupError:
            return False
        return True

    def shutdown(self) -> None:
        """Ask the engine it started to stop (a kill after 10 s), then free everything."""
        if self.process is not None and self.process.poll() is None:
            try:
                self._send(Shutdown())
                self.process.wait(timeout=10)
            except (subprocess.TimeoutExpired, EngineDeadError, zmq.ZMQError):
                pass
        self._finalizer()

    # -- start-up ------------------------------------------------------------------------

    def wait_started(self) -> Started:
        """Until the engine reports in: ValueError (a configuration the user can fix) or
        RuntimeError when it could not start, EngineDeadError if it died on the way."""
        while True:
            message = self._receive(None, None)
            if isinstance(message, Started):
                break
        if message.error is not None:
            if self.process is not None:
                self.process.wait(timeout=30)
            if message.error_type == "ValueError":
                raise ValueError(message.error)
            raise RuntimeError(f"The engine core failed to start: {message.error}")
        return message

    # -- sockets -------------------------------------------------------------------------

    def _send(self, message: Any) -> None:
        if not self.is_alive():
            raise EngineDeadError("The engine core process is not running.")
        self.input.send_multipart(self.codec.encode(message), copy=False)

    def _receive(self, wake_fd: int | None, deadline: float | None) -> Any:
        poller = zmq.Poller()
        poller.register(self.output, zmq.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, zmq.POLLIN)
        while True:
            wait = (
                _LIVENESS_S if deadline is None else min(_LIVENESS_S, deadline - time.monotonic())
            )
            events = dict(poller.poll(max(wait, 0) * 1000))
            if self.output in events:
                return self.codec.decode(self.output.recv_multipart(copy=False))
            if wake_fd is not None and wake_fd in events:
                return None
            if not self.is_alive():
                self._dead = True
                code = self.process.returncode if self.process is not None else None
                raise EngineDeadError(
                    f"The engine core process {describe_exit(code)}; see its log above."
                )
            if deadline is not None and time.monotonic() >= deadline:
                return None


def _release(
    context: zmq.Context,
    sockets: list[zmq.Socket],
    addresses: tuple[str, str],
    processes: list[subprocess.Popen | None],
) -> None:
    """Stop the engine process (if this client started it) and free the sockets."""
    for process in processes:
        if process is None:
            continue
        if process.stdin is not None:
            process.stdin.close()  # the engine exits when its stdin ends
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for socket in sockets:
        socket.close(linger=0)
    context.term()
    remove_addresses(addresses)
