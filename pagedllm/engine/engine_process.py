"""Starting the engine core's process (``python -m pagedllm.engine.core_proc``), early.

Start-up is two slow halves in two processes: this one builds the configuration
(``EngineArgs.create_engine_config`` imports transformers to read the model's config), and
the engine process imports torch and transformers before it builds anything. ``start_early``
launches the engine process first, with the arguments the configuration is built from
(``EngineArguments``), then builds the configuration here and sends it. The engine process,
once its imports are done, uses this configuration if it has arrived; if not, it builds the
same one from the arguments and the engine from it, rather than wait (the front end's own
imports and configuration are as long as the engine's imports on the H200), and checks it
against this one when it arrives (``core_proc.main``).

Invariant: the engine process's stdin carries, in order, an optional ``PickledArguments``
and exactly one ``EngineConfig`` (each a length-prefixed pickle: the engine looks at the raw
pipe to see whether the config has arrived). This process's configuration is the one the
engine serves with. An engine building ahead reads the config only once built: a config
larger than the pipe's buffer (64 KiB on Linux; ~3 KB is usual) holds ``configure`` until
then. The pipe stays open for the parent's life: its end before the config (a
configuration error here) makes the process exit quietly, its end afterwards makes the
engine stop.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from pagedllm import envs
from pagedllm.config import EngineArgs, EngineConfig, UsageContext
from pagedllm.executor.parent_watch import module_argv, spawn_owned
from pagedllm.logger import init_logger

logger = init_logger(__name__)

_LENGTH = struct.Struct("<Q")  # the byte count before each message on the engine's stdin


_SOCKET_DIR_PREFIX = "pagedllm-ipc-"


def engine_addresses(num_clients: int) -> tuple[str, list[str]]:
    """IPC endpoints for one engine: its input, and one output per front end.

    They live in a directory of their own made by ``mkdtemp`` (mode 0700): the engine's input
    unpickles what arrives (``SamplingParams`` with logits processors), so no other user of
    the machine may reach it, whatever the umask; sockets named in the shared temporary
    directory could be connected to, or bound first, by anyone whose umask let them."""
    directory = tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX)
    inputs = f"ipc://{os.path.join(directory, 'in')}"
    return inputs, [f"ipc://{os.path.join(directory, f'out{i}')}" for i in range(num_clients)]


def remove_addresses(addresses: Iterable[str]) -> None:
    """Delete the sockets' files, then their directory once it is empty (the last of several
    front ends sharing one engine removes it)."""
    for address in addresses:
        path = address.removeprefix("ipc://")
        with contextlib.suppress(OSError):
            os.unlink(path)
        directory = os.path.dirname(path)
        if os.path.basename(directory).startswith(_SOCKET_DIR_PREFIX):
            with contextlib.suppress(OSError):
                os.rmdir(directory)


@dataclass(frozen=True)
class EngineArguments:
    """What the front end builds its configuration from, sent at launch: the engine process
    builds the same configuration from it when it is ready first."""

    engine_args: EngineArgs
    usage_context: UsageContext

    def build(self) -> EngineConfig:
        return self.engine_args.create_engine_config(self.usage_context)


@dataclass(frozen=True)
class PickledArguments:
    """``EngineArguments`` as sent: pickled inside the message, so that arguments the engine
    process cannot load (a user's class importable only in the user's process) cost it
    only the build ahead, and the next message is still read where it starts."""

    data: bytes

    @classmethod
    def of(cls, arguments: EngineArguments) -> PickledArguments | None:
        """None for arguments that do not pickle (a user's lambda among them): the engine
        then waits for the configuration, which must pickle anyway."""
        try:
            return cls(pickle.dumps(arguments, protocol=pickle.HIGHEST_PROTOCOL))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            logger.debug("Engine arguments not sent ahead (%s)", exc)
            return None

    def load(self) -> EngineArguments | None:
        try:
            return pickle.loads(self.data)
        except Exception as exc:
            logger.info("The engine arguments did not load here (%s: %s); waiting for the "
                        "front end's configuration", type(exc).__name__, exc)  # fmt: skip
            return None


def write_message(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def read_message(fd: int, loads: Callable[[bytes], Any] = pickle.loads) -> Any | None:
    """The next message on ``fd`` (blocking), unpickled by ``loads``; None when the pipe
    ends first."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    data = _read_exactly(fd, _LENGTH.unpack(header)[0])
    return None if data is None else loads(data)


def message_waiting(fd: int) -> bool:
    """Whether bytes (or the pipe's end) wait on ``fd`` now. Raw reads only: no buffer in
    this process holds a message's bytes that this would not see."""
    return bool(select.select([fd], [], [], 0)[0])


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@dataclass
class PendingEngine:
    """An engine process started before its configuration: importing, then waiting for the
    config on its stdin."""

    input_address: str
    output_addresses: list[str]
    process: subprocess.Popen
    configured: bool = False

    @classmethod
    def launch(
        cls, num_clients: int = 1, arguments: EngineArguments | None = None
    ) -> PendingEngine:
        """Start the process; ``arguments``, if given, go to it first (see the module)."""
        input_address, outputs = engine_addresses(num_clients)
        process = spawn_owned(
            module_argv("pagedllm.engine.core_proc", input_address, *outputs),
            stdin=subprocess.PIPE,
        )
        logger.info("Engine core process started (pid %d)", process.pid)
        pending = cls(input_address, outputs, process)
        if arguments is not None:
            pending._send_arguments(arguments)
        return pending

    def _send_arguments(self, arguments: EngineArguments) -> None:
        message = PickledArguments.of(arguments)
        if message is not None:
            assert self.process.stdin is not None
            write_message(self.process.stdin, message)

    def configure(self, config: EngineConfig) -> subprocess.Popen:
        """Send the configuration: the process builds the engine from it. The pipe stays
        open for this process's life: its end (even a kill) tells the engine to stop."""
        stdin = self.process.stdin
        assert stdin is not None
        write_message(stdin, config)
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
        remove_addresses([self.input_address, *self.output_addresses])


def start_early(
    engine_args: EngineArgs, usage_context: UsageContext, num_clients: int = 1
) -> tuple[EngineConfig, PendingEngine | None]:
    """The configuration, built with the engine process launched first (given the same
    arguments), where the engine runs in its own process (``PAGEDLLM_ENABLE_MULTIPROCESSING``,
    the default); the process is stopped if the configuration raises."""
    arguments = EngineArguments(engine_args, usage_context)
    multiprocess = envs.enable_multiprocessing()
    pending = PendingEngine.launch(num_clients, arguments) if multiprocess else None
    with cancelled_on_error(pending):
        return arguments.build(), pending


@contextlib.contextmanager
def cancelled_on_error(pending: PendingEngine | None) -> Iterator[None]:
    """Stop ``pending`` if the block raises before it was configured."""
    try:
        yield
    except BaseException:
        if pending is not None:
            pending.cancel()
        raise
