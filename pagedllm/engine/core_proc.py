"""The engine core in its own process: a busy loop that never waits on a client.

    receive (requests, aborts, utility calls) -> step -> send the step's outputs

Requests arrive on one PULL socket from every front end (several API servers may share one
core); each front end has its own output socket, and a request's outputs go to the front
end that sent it. The loop blocks only when it has nothing to run, and then wakes at least
once a second to notice a parent that died (it exits with it).

Started by ``engine_process.PendingEngine`` as ``python -m pagedllm.engine.core_proc``,
often before its configuration exists (``start_early``): it then builds the engine from the
engine arguments if the front end's configuration has not arrived when its imports end
(``BuiltAhead``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import pickle
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from pagedllm.config import EngineConfig
from pagedllm.core.request import FinishReason
from pagedllm.core.scheduler_output import EngineCoreOutput
from pagedllm.engine.core import EngineCore
from pagedllm.engine.engine_process import (
    EngineArguments,
    PickledArguments,
    message_waiting,
    read_message,
)
from pagedllm.engine.heap import freeze_built_engine, freeze_library_heap
from pagedllm.engine.messages import (
    Abort,
    Codec,
    EngineCoreOutputs,
    EngineCoreRequest,
    Shutdown,
    Started,
    Tag,
    UnreadableRequest,
    UtilityCall,
    UtilityResult,
)
from pagedllm.executor.parent_watch import exit_with_parent
from pagedllm.inputs.tokenizer import limit_tokenizer_threads
from pagedllm.logger import init_logger
from pagedllm.metrics.stats import EngineSnapshot, IterationStats
from pagedllm.unused_modules import (
    hide_unused_libraries,
    hub_kernels_stubbed,
    without_transformers_models,
)

logger = init_logger(__name__)

_IDLE_POLL_MS = 1000  # how often an idle engine looks for its parent
INTAKE_BUDGET_S = 0.005  # messages handled between two steps while requests run
# Messages read from the socket in one pass, at most. Reading is a receive (~1-3 us): a
# request is decoded when handled (~0.1 ms for its token ids and pickled parameters; its
# blocks hashed and scheduled, ~1 ms), so an abort behind a thousand adds is read at once.
READ_BUDGET_S = 0.01


class EngineCoreLoop:
    def __init__(self, core: EngineCore, inbound: zmq.Socket, outbound: list[zmq.Socket]) -> None:
        self.core = core
        self.inbound = inbound
        self.outbound = outbound
        self.codec = Codec()
        self.client_of: dict[str, int] = {}  # request id -> the front end that sent it
        self._stopping = False
        self._changed = False  # since the last message sent: state worth reporting
        # Messages read but not yet handled (adds, utility calls), in arrival order, as
        # their frames: decoded when handled.
        self._backlog: deque[list[Any]] = deque()
        # The requests among them: sequences waiting as much as the scheduler's, and
        # reported with them (``_snapshot``): /metrics showed nothing waiting while 768
        # adds sat here unread.
        self._backlog_adds = 0

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbound, zmq.POLLIN)
        while not self._stopping:
            busy = self.core.has_unfinished_requests()
            if not busy and self._changed:
                self._send_idle_state()
            if not busy:
                self.core.check_health()  # a lost worker rank ends the engine, even idle
            self._take_in(poller, busy)
            if self.core.has_unfinished_requests():
                self._step()

    def _take_in(self, poller: zmq.Poller, busy: bool) -> None:
        """Read the messages waiting (blocking up to a second when idle, and within
        READ_BUDGET_S), aborts applied as they are read; then handle the others in order. While
        steps run, at most INTAKE_BUDGET_S of handling between two steps: a burst of arrivals
        (500 requests sent at once) would otherwise hold the next step back while the device
        idles; the rest wait in ``_backlog`` for the next pass, a step later."""
        start = time.perf_counter()
        self._read(poller, 0 if busy or self._backlog else _IDLE_POLL_MS)
        handled = 0
        while self._backlog:
            frames = self._backlog.popleft()
            self._backlog_adds -= self.codec.peek(frames)[0] == Tag.REQUEST
            self._handle(frames)
            handled += 1
            over = time.perf_counter() - start > INTAKE_BUDGET_S
            if over and self.core.has_unfinished_requests():  # an idle engine given work too
                break
        if handled > 1 and logger.isEnabledFor(logging.DEBUG):
            logger.debug("Took in %d messages in %.2f ms", handled,
                         1e3 * (time.perf_counter() - start))  # fmt: skip

    def _read(self, poller: zmq.Poller, timeout: int) -> None:
        """Move the waiting messages into ``_backlog`` undecoded, and apply the pass's aborts
        once read: their requests' adds still in the backlog are dropped, so a client that
        hung up on 128 prompts of 8,000 tokens frees the engine as soon as its abort is
        read, not once its adds (~1 ms each) have all been handled behind it. Undecoded,
        because decoding adds within the budget read ~100 a pass: six clients' 768 adds and
        their aborts took many passes of 2.7 s CPU prefill steps, each step prefilling an
        add whose abort waited unread."""
        start = time.perf_counter()
        # The pass's aborts, applied together once read (one at a time, each filtering the
        # backlog, read ~12 a pass behind 768 adds): request id -> the backlog's length when
        # its abort was read (an add read after it, under the same id, is a new request).
        aborted: dict[str, int] = {}
        while poller.poll(timeout):
            frames = self.inbound.recv_multipart(copy=False)
            timeout = 0
            tag = self.codec.peek(frames)[0]
            if tag == Tag.ABORT:
                message = self.codec.decode(frames)
                assert isinstance(message, Abort)
                aborted.update(dict.fromkeys(message.request_ids, len(self._backlog)))
            else:
                self._backlog.append(frames)
                self._backlog_adds += tag == Tag.REQUEST
            if time.perf_counter() - start > READ_BUDGET_S:
                break
        if aborted:
            self._abort(aborted)

    def _abort(self, aborted: dict[str, int]) -> None:
        """Abort requests: their adds in the backlog ahead of each abort (``aborted``: id ->
        the backlog's length when its abort was read) are dropped, and the core aborts
        those it holds (it skips ids it does not know)."""
        self._changed = True
        if self._backlog:
            peek = self.codec.peek
            self._backlog = deque(
                frames
                for at, frames in enumerate(self._backlog)
                if at >= aborted.get(peek(frames)[1] or "", -1)
            )
            self._backlog_adds = sum(peek(frames)[0] == Tag.REQUEST for frames in self._backlog)
        self.core.abort_requests(list(aborted))
        for request_id in aborted:
            self.client_of.pop(request_id, None)

    def _handle(self, frames: list[Any]) -> None:
        self._changed = True
        message = self.codec.decode(frames)
        if isinstance(message, EngineCoreRequest):
            self._add(message)
        elif isinstance(message, UnreadableRequest):
            self._refuse(message)
        elif isinstance(message, UtilityCall):
            self._send(message.client_index, self._utility(message))
        elif isinstance(message, Shutdown):
            self._stopping = True

    def _add(self, request: EngineCoreRequest) -> None:
        self.client_of[request.request_id] = request.client_index
        failed = self.core.try_add_request(request)
        if failed is not None:
            self._emit([failed], IterationStats())

    def _refuse(self, request: UnreadableRequest) -> None:
        """Fail a request this process could not read, alone: the others run on."""
        logger.error("Request %s could not be read: %s", request.request_id, request.error)
        self.client_of[request.request_id] = request.client_index
        error = (
            f"The engine process could not read the request's sampling parameters "
            f"({request.error}); what they hold (logits_processors) must be importable there."
        )
        failed = EngineCoreOutput(request.request_id, [], FinishReason.ERROR, error=error)
        self._emit([failed], IterationStats())

    def _utility(self, call: UtilityCall) -> UtilityResult:
        try:
            return UtilityResult(call.call_id, self.core.call_utility(call.name, *call.args))
        except Exception as exc:
            return UtilityResult(call.call_id, error=f"{type(exc).__name__}: {exc}")

    def _step(self) -> None:
        outputs, iteration = self.core.step()
        if outputs or iteration.num_prompt_tokens or iteration.num_generation_tokens:
            self._emit(outputs, iteration)

    def _emit(self, outputs: list[EngineCoreOutput], iteration: IterationStats) -> None:
        """Each front end gets its requests' outputs, and the step's counts."""
        snapshot = self._snapshot()
        # One front end (the common case) takes them all: no lookup per output.
        groups = {0: outputs} if len(self.outbound) == 1 else self._by_client(outputs)
        for output in outputs:
            if output.finish_reason is not None:
                self.client_of.pop(output.request_id, None)
        for client in range(len(self.outbound)):
            # Every front end gets the engine-wide counts: any API server's /metrics
            # reports the whole engine.
            self._send(client, EngineCoreOutputs(groups.get(client, []), iteration, snapshot))
        self._changed = False

    def _snapshot(self) -> EngineSnapshot:
        """The core's counts, the requests read but not yet handled counted as waiting."""
        snapshot = self.core.snapshot()
        snapshot.num_waiting += self._backlog_adds
        return snapshot

    def _by_client(self, outputs: list[EngineCoreOutput]) -> dict[int, list[EngineCoreOutput]]:
        by_client: dict[int, list[EngineCoreOutput]] = {}
        for output in outputs:
            by_client.setdefault(self.client_of.get(output.request_id, 0), []).append(output)
        return by_client

    def _send_idle_state(self) -> None:
        self._emit([], IterationStats())

    def _send(self, client: int, message: Any) -> None:
        self.outbound[client].send_multipart(self.codec.encode(message), copy=False)


def run_engine_core(
    config: EngineConfig,
    input_address: str,
    output_addresses: list[str],
    built: EngineCore | Exception | None = None,
) -> None:
    """Build the core (unless ``built`` holds it, or the error building it raised), say so
    on every output socket, then serve until told to stop."""
    context = zmq.Context()
    inbound = context.socket(zmq.PULL)
    inbound.bind(input_address)
    outbound = [context.socket(zmq.PUSH) for _ in output_addresses]
    for socket, address in zip(outbound, output_addresses):
        socket.connect(address)
    codec = Codec()
    core = build_core(config) if built is None else built
    if isinstance(core, Exception):
        # A ValueError is most often a refusal of the configuration, which the front end
        # prints as its error: one line here, the traceback at debug level (a ValueError
        # from a bug keeps it there). Anything else is a fault, logged with its traceback.
        if isinstance(core, ValueError):
            logger.info("The engine core refused to start (traceback at debug level): %s", core)
            logger.debug("The engine core failed to start", exc_info=core)
        else:
            logger.error("The engine core failed to start", exc_info=core)
        started = Started(error=str(core), error_type=type(core).__name__)
        for socket in outbound:
            socket.send_multipart(codec.encode(started))
        _close(context, [inbound, *outbound])
        return
    for socket in outbound:
        socket.send_multipart(codec.encode(Started(num_gpu_blocks=core.kv_cache_plan.num_blocks)))
    try:
        EngineCoreLoop(core, inbound, outbound).run()
    finally:
        core.shutdown()  # worker processes, if any
        _close(context, [inbound, *outbound])


def build_core(config: EngineConfig) -> EngineCore | Exception:
    """The engine core, or the exception that stopped it (reported to the front ends)."""
    try:
        freeze_library_heap(own_process=True)
        core = EngineCore(config)
        freeze_built_engine()
    except Exception as exc:
        return exc
    return core


def _close(context: zmq.Context, sockets: list[zmq.Socket]) -> None:
    for socket in sockets:
        socket.close(linger=1000)  # let the last messages out, but never wait for long
    context.term()


def process_age_s() -> float | None:
    """Seconds since this process was created (Linux: /proc/self/stat's start time against
    the boot clock); None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# What unpickling a model's transformers config imports (~1-2 s): imported while the parent
# still builds the config (``engine_process.start_early``), not after it arrives. A module
# missing from another transformers version only loses that overlap.
_CONFIG_MODULES = (
    "transformers.configuration_utils",
    "transformers.utils.type_validators",
    "transformers.models.auto.configuration_auto",
)


def _import_config_modules() -> None:
    import importlib

    hide_unused_libraries()  # before transformers: the engine never uses them
    with hub_kernels_stubbed():  # the validators' activations, without the conversion code
        for name in _CONFIG_MODULES:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


def main() -> None:
    """``python -m pagedllm.engine.core_proc INPUT OUTPUT...``, the messages of
    ``engine_process`` on stdin (a plain subprocess, not multiprocessing: the parent's
    ``__main__`` is never re-imported, and CUDA starts fresh). A stdin that ends before the
    config (the parent's configuration failed) ends this process quietly."""
    _import_config_modules()
    imported = process_age_s()
    stdin = sys.stdin.fileno()
    first = read_message(stdin, loads=load_config)  # the arguments, or the config itself
    ahead = None
    if isinstance(first, PickledArguments):
        if not message_waiting(stdin):  # the front end's config is not here yet
            arguments = first.load()
            ahead = BuiltAhead.build(arguments) if arguments is not None else None
        first = read_message(stdin, loads=load_config)
    if first is None:
        return
    config: EngineConfig = first
    if imported is not None:  # start-up time before the engine is built (issue 18's W4)
        logger.info("Engine core process: interpreter and imports %.2f s, config received "
                    "at %.2f s", imported, process_age_s() or imported)  # fmt: skip
    built = ahead.take(config) if ahead is not None else None
    del ahead
    limit_tokenizer_threads(config.device)
    exit_with_parent(stdin)
    run_engine_core(config, sys.argv[1], sys.argv[2:], built=built)


def load_config(data: bytes) -> Any:
    """The front end's configuration, unpickled: its model's config class is defined here
    (if the build ahead has not) without transformers' model registry, as the front end
    loaded it (``config._load_hf_config``)."""
    return without_transformers_models(lambda: pickle.loads(data))


@dataclasses.dataclass
class BuiltAhead:
    """The configuration the front end is building, built here from the same arguments,
    and the engine core built from it (or the error that stopped it) while the front end's
    configuration was still on its way."""

    config: EngineConfig
    core: EngineCore | Exception | None

    @classmethod
    def build(cls, arguments: EngineArguments) -> BuiltAhead | None:
        """None if the configuration raises: the front end raises the same error to its
        user. Quiet: the front end logs the configuration's lines and warnings."""
        with _quiet():
            try:
                config = arguments.build()
            except Exception as exc:
                failed = exc
            else:
                failed = None
        if failed is not None:
            logger.info("The engine arguments built no configuration here (%s: %s); "
                        "waiting for the front end's configuration",
                        type(failed).__name__, failed)  # fmt: skip
            return None
        limit_tokenizer_threads(config.device)
        core = build_core(config)
        logger.info("Engine core built from the engine arguments at %.2f s, before the "
                    "front end's configuration arrived", process_age_s() or 0.0)  # fmt: skip
        return cls(config, core)

    def take(self, config: EngineConfig) -> EngineCore | Exception | None:
        """The core built ahead if its configuration is the front end's. Else None, with
        the core shut down and its memory freed: the engine is built again from the
        front end's configuration, the one its tokenizer and checks use."""
        if self.config == config:
            core, self.core = self.core, None
            return core
        differ = [
            f.name
            for f in dataclasses.fields(config)
            if getattr(self.config, f.name) != getattr(config, f.name)
        ]
        logger.warning(
            "The engine built from the engine arguments differs from the front end's "
            "configuration in %s; building it again from the front end's (a slower "
            "start-up; please report this).", ", ".join(differ),
        )  # fmt: skip
        if isinstance(self.core, EngineCore):
            self.core.shutdown()
        self.core = None  # the last reference
        # build_core froze the core out of the collector's reach: its reference cycles
        # are found only once thawed (the next build freezes what is left again).
        gc.unfreeze()
        gc.collect()
        _empty_device_cache()
        return None


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log line below ERROR and no Python warning inside (the front end shows them)."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


if __name__ == "__main__":
    main()
