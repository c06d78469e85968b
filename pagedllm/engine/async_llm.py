"""AsyncLLM: the engine behind an asyncio API, for servers and streaming clients.

The engine loop runs on a background thread (DESIGN.md, "Processes"): it takes commands
(add, abort, call) from a thread-safe inbox, steps the engine while there is work, and hands
each RequestOutput to its request's asyncio queue on the caller's event loop. Every
concurrent ``generate`` call is batched into the same engine steps.

Invariant: only the engine thread touches the LLMEngine after start-up; other threads talk
to it through the inbox (``prepare_request`` is the exception: it is pure validation and
tokenization, done on the caller's side so bad input fails before anything is queued).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from pagedllm.beam_search import (
    BeamSearchOutput,
    BeamSearchSequence,
    BeamSearchState,
    prompt_ids_of,
    step_params,
)
from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.engine.llm_engine import LLMEngine, PreparedRequest
from pagedllm.inputs.processor import PromptType
from pagedllm.logger import init_logger
from pagedllm.metrics.stats import StatLogger
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import BeamSearchParams, SamplingParams

logger = init_logger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop has stopped (shut down, or it failed)."""


class RequestStream:
    """One request's outputs, filled from the engine thread, read on an event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put_threadsafe(self, item: RequestOutput | BaseException) -> None:
        # RuntimeError: the consumer's loop is closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLM:
    def __init__(
        self,
        config: EngineConfig,
        log_requests: bool = True,
        log_stats: bool = True,
        stat_loggers: list[StatLogger] | None = None,
    ) -> None:
        self.config = config
        self.model_config = config.model_config
        self.engine = LLMEngine(config, log_stats=log_stats)
        self.engine.stat_loggers += stat_loggers or []
        self.tokenizer = self.engine.tokenizer
        self.log_requests = log_requests
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._live: set[str] = set()  # request ids with a generate() in progress
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pagedllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(
        cls,
        engine_args: EngineArgs,
        start_engine_loop: bool = True,
        usage_context: Any = None,
        stat_loggers: list[StatLogger] | None = None,
        **_: Any,
    ) -> AsyncLLM:
        log_requests = not getattr(engine_args, "disable_log_requests", False)
        return cls(
            engine_args.create_engine_config(),
            log_requests=log_requests,
            log_stats=not engine_args.disable_log_stats,
            stat_loggers=stat_loggers,
        )

    # -- status --------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    @property
    def errored(self) -> bool:
        return self._error is not None or not self._thread.is_alive()

    async def check_health(self) -> None:
        if self.errored:
            raise EngineDeadError("The engine loop is not running.") from self._error

    async def get_tokenizer(self, lora_request: Any = None) -> Any:
        return self.tokenizer

    async def get_model_config(self) -> Any:
        return self.model_config

    # -- requests ------------------------------------------------------------------------

    def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        lora_request: Any = None,
        trace_headers: Any = None,
        priority: int = 0,
        data_parallel_rank: int | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Stream the request's outputs as the engine produces them (per its output_kind):
        ``async for output in engine.generate(prompt, params, request_id)``.

        The prompt and parameters are validated at the call, so bad input raises ValueError
        before anything is queued. The request enters the engine when iteration starts;
        closing the generator early (break, task cancellation, client gone) aborts it and
        frees its KV blocks.
        """
        if lora_request is not None:
            raise ValueError("lora_request is not supported by pagedllm yet.")
        if data_parallel_rank not in (None, 0):
            raise ValueError("data_parallel_rank is not supported: pagedllm runs one engine.")
        if not self.is_running:
            raise EngineDeadError("The engine loop is not running.")
        if request_id in self._live:
            raise ValueError(f"Request id {request_id!r} is already running.")
        prepared = self.engine.prepare_request(request_id, prompt, sampling_params, None, priority)
        return self._stream(prepared)

    async def _stream(self, prepared: PreparedRequest) -> AsyncGenerator[RequestOutput, None]:
        request_id = prepared.request_id
        if request_id in self._live:
            raise ValueError(f"Request id {request_id!r} is already running.")
        stream = RequestStream(asyncio.get_running_loop())
        self._live.add(request_id)
        finished = False
        try:
            self._send("add", prepared, stream)
            if self.log_requests:
                _log_request(prepared)
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._live.discard(request_id)
            if not finished:
                self._send("abort", [request_id], False)
                if self.log_requests:
                    logger.info("Aborted request %s.", request_id)
            elif self.log_requests:
                logger.info("Finished request %s.", request_id)

    async def beam_search(
        self, prompt: PromptType, request_id: str, params: BeamSearchParams
    ) -> BeamSearchOutput:
        """Beam search (see ``pagedllm.beam_search``); each step's beams run as concurrent
        one-token requests, batched with everything else the engine is serving."""
        state = BeamSearchState(prompt_ids_of(prompt, self.tokenizer), params, self._eos())
        sampling = step_params(params)
        max_len = self.model_config.max_model_len
        step = 0
        while state.beams and state.can_grow(step, max_len):
            outputs = await asyncio.gather(*(
                _final(self.generate({"prompt_token_ids": beam.tokens}, sampling,
                                     f"{request_id}-beam{step}-{i}"))
                for i, beam in enumerate(state.beams)
            ))  # fmt: skip
            state.advance(list(outputs))
            step += 1
        tokenizer = self.tokenizer

        def decode(beam: BeamSearchSequence) -> str:
            return tokenizer.decode(beam.generated, skip_special_tokens=True) if tokenizer else ""

        return state.result(decode)

    def _eos(self) -> int | None:
        return self.engine.processor.eos_token_id

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """End requests now; their generate() calls yield a final output (finish "abort")."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self._send("abort", ids, True)
        if self.log_requests:
            logger.info("Aborted request(s) %s.", ", ".join(ids))

    async def reset_prefix_cache(self) -> bool:
        return await self.call(lambda engine: engine.reset_prefix_cache())

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run ``fn(engine)`` on the engine thread, between steps, and return its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._send("call", fn, future)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Stop the engine loop; live requests end with EngineDeadError."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=30)

    # -- the engine thread ---------------------------------------------------------------

    def _send(self, *command: Any) -> None:
        self._inbox.put(command)
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                changed = self._drain_inbox()
                if self.engine.has_unfinished_requests():
                    self._step()
                else:
                    if changed:
                        self.engine.record_stats()  # e.g. KV usage back to zero after aborts
                    self._wake.wait(timeout=1.0)
                    self._wake.clear()
        except BaseException as exc:  # pragma: no cover - a bug in the loop itself
            logger.exception("The engine loop died")
            self._error = exc
        finally:
            self._fail_all(EngineDeadError("The engine has shut down."))

    def _step(self) -> None:
        try:
            delivered = self.engine.step_with_states()
        except Exception as exc:
            # One failing step must not take the server down: fail what was in flight.
            logger.exception("Engine step failed; aborting the requests in flight")
            self._fail_all(exc)
            return
        for state, output in delivered:
            if state.queue is not None:
                state.queue.put_threadsafe(output)

    def _drain_inbox(self) -> bool:
        changed = False
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            kind = command[0]
            if kind == "add":
                self._add(command[1], command[2])
            elif kind == "abort":
                self._abort(command[1], notify=command[2])
            elif kind == "call":
                _run_call(self.engine, command[1], command[2])

    def _add(self, prepared: PreparedRequest, stream: RequestStream) -> None:
        try:
            self.engine.add_prepared(prepared, queue=stream)
        except Exception as exc:
            stream.put_threadsafe(exc)

    def _abort(self, request_ids: list[str], notify: bool) -> None:
        finals = self.engine.abort_with_outputs(request_ids)
        if notify:
            for state, output in finals:
                if state.queue is not None:
                    state.queue.put_threadsafe(output)

    def _fail_all(self, exc: BaseException) -> None:
        states = list(self.engine.output_processor.states.values())
        external = {s.external_id for s in states}
        self.engine.abort_request(list(external))
        notified: set[int] = set()
        for state in states:
            if state.queue is not None and id(state.queue) not in notified:
                notified.add(id(state.queue))
                state.queue.put_threadsafe(exc)


async def _final(outputs: AsyncGenerator[RequestOutput, None]) -> RequestOutput:
    final = None
    async for output in outputs:
        final = output
    assert final is not None
    return final


def _run_call(engine: LLMEngine, fn: Callable[[LLMEngine], Any], future: Any) -> None:
    try:
        future.set_result(fn(engine))
    except Exception as exc:
        future.set_exception(exc)


def _log_request(prepared: PreparedRequest) -> None:
    prompt = prepared.prompt
    text = prompt.prompt if prompt.prompt is None else prompt.prompt[-200:]
    logger.info(
        "Received request %s: prompt: %r, params: %s, prompt_token_ids: %d tokens, at %.3f",
        prepared.request_id,
        text,
        prepared.params,
        len(prompt.prompt_token_ids),
        time.time(),
    )
