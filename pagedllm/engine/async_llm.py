"""AsyncLLM: the engine behind an asyncio API, for servers and streaming clients.

The front end runs on a background thread (docs/architecture.md, "Processes"): it takes
commands (add, abort, call) from a thread-safe inbox, waits on whichever comes first of the
engine core's next outputs and a wake-up pipe, and hands each RequestOutput to its
request's asyncio queue on the caller's event loop. The engine core itself runs in its own
process (or, with PAGEDLLM_ENABLE_MULTIPROCESSING=0, is stepped by this thread). Every
concurrent ``generate`` call is batched into the same engine steps.

Invariant: only the front-end thread touches the LLMEngine after start-up; other threads
talk to it through the inbox (``prepare_request`` is the exception: it is pure validation
and tokenization, done on the caller's side so bad input fails before anything is queued).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from pagedllm.beam_search import (
    BeamSearchOutput,
    BeamSearchSequence,
    BeamSearchState,
    prompt_ids_of,
    step_params,
)
from pagedllm.config import EngineArgs, EngineConfig, UsageContext
from pagedllm.core.request import ErrorCause
from pagedllm.engine.core_client import EngineCoreClient
from pagedllm.engine.engine_process import PendingEngine, cancelled_on_error, start_early
from pagedllm.engine.exceptions import (
    EngineDeadError,
    EngineOverloadedError,
    RequestFailedError,
    RequestInputError,
)
from pagedllm.engine.llm_engine import LLMEngine, PreparedRequest
from pagedllm.engine.output_processor import RequestState
from pagedllm.engine.parent_request import num_samples
from pagedllm.engine.request_logger import RequestLogger
from pagedllm.inputs.processor import PromptType
from pagedllm.inputs.tokenizer import TextBounds
from pagedllm.logger import init_logger
from pagedllm.metrics.stats import StatLogger
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

logger = init_logger(__name__)

__all__ = ["AsyncLLM", "EngineDeadError", "EngineOverloadedError", "RequestFailedError"]


# Unread outputs a request's stream keeps as they came (each its own SSE event); past
# this many, what arrives is merged into the last. A reader that keeps up never sees a merge.
MAX_UNREAD_OUTPUTS = 32


class RequestStream:
    """One request's outputs, filled from the engine thread, read on an event loop.

    A reader slower than the engine's steps finds at most ``MAX_UNREAD_OUTPUTS`` outputs
    waiting, the last holding everything past them merged (``merge_outputs``; vLLM's output
    collector merges all): a stalled client's stream stays bounded (a stream of 100,000
    tokens to a client that stopped reading held ~1 KB a step), and each merge costs the
    step's own tokens, not the stream's (the text is joined once, when read). An error is
    kept beside the pending outputs and read after them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kind: RequestOutputKind) -> None:
        self.loop = loop
        self.kind = kind
        self._outputs: collections.deque[RequestOutput] = collections.deque()
        # The last output's text pieces merged since it was put, per sample index.
        self._texts: dict[int, list[str]] = {}
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put_threadsafe(self, item: RequestOutput | BaseException) -> None:
        # RuntimeError: the consumer's loop is closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.put, item)

    def put(self, item: RequestOutput | BaseException) -> None:
        """On the stream's loop. Invariant: nothing follows an error or a finished output
        into the stream, so an error is kept once and read last."""
        if isinstance(item, BaseException):
            self._error = self._error or item
        elif len(self._outputs) < MAX_UNREAD_OUTPUTS:
            self._join_texts()  # the last output stops being merged into
            self._outputs.append(item)
        else:
            merge_outputs(self._outputs[-1], item, self.kind, self._texts)
        self._ready.set()

    async def get(self) -> RequestOutput | BaseException:
        """The oldest unread output, else the error."""
        await self._ready.wait()
        if not self._outputs:
            assert self._error is not None
            return self._error
        if len(self._outputs) == 1:
            self._join_texts()
        item = self._outputs.popleft()
        if not self._outputs and self._error is None:
            self._ready.clear()
        return item

    def _join_texts(self) -> None:
        """Give the last output the texts merged into it."""
        if not self._texts:
            return
        for completion in self._outputs[-1].outputs:
            pieces = self._texts.get(completion.index)
            if pieces is not None:
                completion.text = "".join(pieces)
        self._texts.clear()


def merge_outputs(
    pending: RequestOutput,
    new: RequestOutput,
    kind: RequestOutputKind,
    texts: dict[int, list[str]],
) -> None:
    """Fold ``new`` into the unread ``pending`` output of the same request, in place (both
    are the stream's own: the output processor builds each step's afresh). DELTA appends
    each sample's ids and logprobs, and its text to ``texts[index]`` (seeded with the
    sample's text; the caller joins them into ``pending`` before it is read); CUMULATIVE
    keeps each sample's newest; samples (``n`` > 1 streams one sample's update per output)
    stay in first-seen order."""
    by_index = {c.index: i for i, c in enumerate(pending.outputs)}
    for completion in new.outputs:
        at = by_index.get(completion.index)
        if at is None:
            by_index[completion.index] = len(pending.outputs)
            pending.outputs.append(completion)
        elif kind == RequestOutputKind.DELTA:
            into = pending.outputs[at]
            texts.setdefault(into.index, [into.text]).append(completion.text)
            _append_delta(into, completion)
        else:
            pending.outputs[at] = completion
    if new.prompt_logprobs is not None:  # DELTA sends them once; CUMULATIVE every time
        pending.prompt_logprobs = new.prompt_logprobs
    pending.finished = new.finished
    pending.metrics = new.metrics
    pending.num_cached_tokens = new.num_cached_tokens
    pending.kv_transfer_params = new.kv_transfer_params


def _append_delta(into: CompletionOutput, delta: CompletionOutput) -> None:
    """Ids and logprobs extended in place: amortized the step's own length."""
    into.token_ids.extend(delta.token_ids)
    if into.logprobs is not None and delta.logprobs is not None:
        into.logprobs.extend(delta.logprobs)
    into.cumulative_logprob = delta.cumulative_logprob
    into.finish_reason, into.stop_reason = delta.finish_reason, delta.stop_reason


def deliver(items: list[tuple[RequestStream, RequestOutput | BaseException]]) -> None:
    """Hand one step's outputs to their streams: one wake-up per event loop, not one per
    request (a wake-up is a system call, and a step can hold a thousand outputs)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, Any]]] = {}
    for stream, item in items:
        by_loop.setdefault(stream.loop, []).append((stream, item))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody listens
            loop.call_soon_threadsafe(_put_all, batch)


def _put_all(batch: list[tuple[RequestStream, Any]]) -> None:
    for stream, item in batch:
        stream.put(item)


class AsyncLLM:
    def __init__(
        self,
        config: EngineConfig,
        log_requests: bool = False,
        log_stats: bool = True,
        stat_loggers: list[StatLogger] | None = None,
        max_samples: int | None = None,
        max_waiting_requests: int | None = None,
        client: EngineCoreClient | None = None,
        log_outputs: bool = False,
        max_log_len: int | None = None,
        pending: PendingEngine | None = None,
    ) -> None:
        """``log_requests``: log each request's prompt and parameters (off by default:
        prompts are user data), ``log_outputs`` its generated text too, each cut to
        ``max_log_len`` characters or ids (``engine/request_logger.py``);
        ``max_samples``: the largest n / best_of a request may ask for;
        ``max_waiting_requests``: sequences that may wait for the scheduler before new
        requests are refused with EngineOverloadedError (None: no bound); ``client`` and
        ``pending``: as ``LLMEngine``'s."""
        self.config = config
        self.model_config = config.model_config
        self.engine = LLMEngine(
            config, log_stats=log_stats, max_samples=max_samples, client=client, pending=pending
        )
        self.engine.stat_loggers += stat_loggers or []
        self.tokenizer = self.engine.tokenizer
        if log_outputs and not log_requests:
            raise ValueError("Logging outputs (--enable-log-outputs) needs request logging "
                             "(--enable-log-requests).")  # fmt: skip
        self.log_requests = log_requests
        self.request_logger = RequestLogger(log_outputs, max_log_len) if log_requests else None
        self.max_waiting_requests = max_waiting_requests
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # Written to wake the engine thread: it waits on this pipe and the core's outputs.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopped = threading.Event()
        self._live: set[str] = set()  # request ids with a generate() in progress
        self._error: BaseException | None = None
        # Sequences sent to the engine thread and not yet taken from its inbox, and those
        # the scheduler holds waiting (written by the engine thread after each step).
        self._num_sent = 0
        self._num_sent_lock = threading.Lock()
        self._num_engine_waiting = 0
        self._thread = threading.Thread(target=self._run, name="pagedllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(
        cls,
        engine_args: EngineArgs,
        start_engine_loop: bool = True,
        usage_context: UsageContext = UsageContext.ENGINE_CONTEXT,
        stat_loggers: list[StatLogger] | None = None,
    ) -> AsyncLLM:
        if not start_engine_loop:
            raise ValueError("start_engine_loop=False is not supported: the loop always runs.")
        config, pending = start_early(engine_args, usage_context)
        with cancelled_on_error(pending):
            return cls(
                config,
                log_requests=bool(getattr(engine_args, "enable_log_requests", False)),
                log_stats=not engine_args.disable_log_stats,
                stat_loggers=stat_loggers,
                pending=pending,
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
        self._check_request(request_id, lora_request, data_parallel_rank)
        prepared = self.engine.prepare_request(request_id, prompt, sampling_params, None, priority)
        return self.generate_prepared(prepared)

    async def prepare(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        priority: int = 0,
    ) -> PreparedRequest:
        """Validate and tokenize on a worker thread (the event loop stays free for large
        prompts); ValueError names what is wrong. ``generate_prepared`` then runs it."""
        self._check_request(request_id, None, None)
        return await asyncio.to_thread(
            self.engine.prepare_request, request_id, prompt, sampling_params, None, priority
        )

    def generate_prepared(
        self, prepared: PreparedRequest, *, logged: bool = True
    ) -> AsyncGenerator[RequestOutput, None]:
        """Stream a prepared request's outputs. Raises EngineOverloadedError at once when
        too many sequences are waiting already. ``logged=False``: the request is one step
        of a request logged as a whole (a beam search's), left out of the request log."""
        self._check_request(prepared.request_id, None, None)
        limit, waiting = self.max_waiting_requests, self.num_waiting()
        samples = num_samples(prepared.params)
        # A request larger than the bound alone still runs when nothing waits.
        if limit is not None and waiting > 0 and waiting + samples > limit:
            raise EngineOverloadedError(
                f"{waiting} requests are waiting, and this server queues at most "
                f"{limit} (--max-waiting-requests); retry later."
            )
        # Counted as waiting from admission (the next check may come before this stream
        # starts); a stream dropped unstarted gives its count back when collected.
        self._count_sent(samples)
        unstarted: list[weakref.finalize] = []
        stream = self._stream(prepared, unstarted, logged)
        unstarted.append(weakref.finalize(stream, self._count_sent, -samples))
        return stream

    def num_waiting(self) -> int:
        """Sequences waiting to be scheduled (as of the engine's last step)."""
        return self._num_sent + self._num_engine_waiting

    def _count_sent(self, delta: int) -> None:
        with self._num_sent_lock:  # changed by the caller's thread and the engine thread
            self._num_sent += delta

    def _check_request(self, request_id: str, lora_request: Any, data_parallel_rank: Any) -> None:
        if not isinstance(request_id, str):
            raise ValueError(
                f"request_id must be a str, got {type(request_id).__name__}; the order is "
                "generate(prompt, sampling_params, request_id)."
            )
        if lora_request is not None:
            raise ValueError("lora_request is not supported by pagedllm yet.")
        if data_parallel_rank not in (None, 0):
            raise ValueError("data_parallel_rank is not supported: pagedllm runs one engine.")
        if not self.is_running:
            raise EngineDeadError("The engine loop is not running.")
        if request_id in self._live:
            raise ValueError(f"Request id {request_id!r} is already running.")

    async def _stream(
        self, prepared: PreparedRequest, unstarted: list[weakref.finalize], logged: bool
    ) -> AsyncGenerator[RequestOutput, None]:
        unstarted[0].detach()  # started: the engine thread takes the count back
        request_id = prepared.request_id
        if request_id in self._live:
            self._count_sent(-num_samples(prepared.params))
            raise ValueError(f"Request id {request_id!r} is already running.")
        stream = RequestStream(asyncio.get_running_loop(), prepared.params.output_kind)
        self._live.add(request_id)
        finished = False
        request_logger = self.request_logger if logged else None
        output_log = request_logger.outputs(prepared) if request_logger else None
        try:
            self._send("add", prepared, stream)
            if request_logger:
                request_logger.received(prepared)
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = isinstance(item, RequestFailedError)  # the engine let it go
                    raise item
                finished = item.finished
                if output_log:
                    output_log.add(item)
                yield item
        finally:
            self._live.discard(request_id)
            if not finished:
                self._send("abort", [request_id], False)
            if request_logger:
                request_logger.ended(request_id, finished, output_log)

    async def beam_search(
        self, prompt: PromptType, request_id: str, params: BeamSearchParams
    ) -> BeamSearchOutput:
        """Beam search (see ``pagedllm.beam_search``); each step's beams run as concurrent
        one-token requests, batched with everything else the engine is serving. The search
        is logged once, as one request: its steps (beams x tokens of them, each with the
        whole sequence so far) made a line each, 1.7 MB of log from a 4.6 KB request."""
        prompt_ids = prompt_ids_of(prompt, self.tokenizer)
        state = BeamSearchState(prompt_ids, params, self._eos())
        sampling = step_params(params)
        max_len = self.model_config.max_model_len
        if self.request_logger:
            self.request_logger.received_beam_search(request_id, prompt_ids, params)
        step, finished = 0, False
        try:
            while state.beams and state.can_grow(step, max_len):
                outputs = await asyncio.gather(*(
                    _final(self._beam_step(beam.tokens, sampling, f"{request_id}-beam{step}-{i}"))
                    for i, beam in enumerate(state.beams)
                ))  # fmt: skip
                state.advance(list(outputs))
                step += 1
            finished = True
        finally:
            if self.request_logger:
                self.request_logger.ended(request_id, finished, None)
        tokenizer = self.tokenizer

        def decode(beam: BeamSearchSequence) -> str:
            return tokenizer.decode(beam.generated, skip_special_tokens=True) if tokenizer else ""

        return state.result(decode)

    def _beam_step(
        self, tokens: list[int], params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        """One beam's next token, as a request left out of the request log."""
        self._check_request(request_id, None, None)
        prompt = {"prompt_token_ids": tokens}
        prepared = self.engine.prepare_request(request_id, prompt, params, None, 0)
        return self.generate_prepared(prepared, logged=False)

    def _eos(self) -> int | None:
        return self.engine.processor.eos_token_id

    @property
    def text_bounds(self) -> TextBounds:
        """What a text prompt may be (``InputProcessor.text_bounds``)."""
        return self.engine.processor.text_bounds

    def check_sequences(self, num_prompts: int, samples: int) -> None:
        """ValueError when one request's prompts x samples pass the server's bound."""
        self.engine.processor.check_sequences(num_prompts, samples)

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """End requests now; their generate() calls yield a final output (finish "abort")."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self._send("abort", ids, True)
        if self.log_requests:
            logger.info("Aborted request(s) %s.", ", ".join(ids))

    async def abort_all(self) -> None:
        """End every request in progress; each stream gets its final output (finish_reason
        "abort"), so a client sees a clean end."""
        if self._live:
            await self.abort(list(self._live))

    async def reset_prefix_cache(self) -> bool:
        return await self.call(lambda engine: engine.reset_prefix_cache())

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run ``fn(engine)`` on the engine thread, between steps, and return its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._send("call", fn, future)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Stop the engine loop and the engine core; live requests end with EngineDeadError."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake()
        self._thread.join(timeout=30)
        self.engine.shutdown()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    # -- the engine thread ---------------------------------------------------------------

    def _send(self, *command: Any) -> None:
        self._inbox.put(command)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending
            os.write(self._wake_w, b"!")

    def _run(self) -> None:
        """Commands in, the core's outputs out to each request's stream. The thread waits
        on the core's next outputs (a step here, or a message from the engine process) or
        on a wake-up for new commands, whichever comes first."""
        try:
            while not self._stopped.is_set():
                self._drain_inbox()
                self._step()
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
        except BaseException as exc:
            # The engine core fails the one request a failing step is traced to and keeps
            # serving; what reaches here leaves nothing runnable (a broken device, a dead
            # engine process, a bug).
            logger.exception("The engine loop died")
            self._error = exc
        finally:
            # Users see that the engine stopped, never another request's error text.
            self._fail_all(EngineDeadError("The engine has stopped (see the server log)."))

    def _step(self) -> None:
        delivered = self.engine.step_with_states(wake_fd=self._wake_r, timeout=1.0)
        self._num_engine_waiting = self.engine.get_num_waiting_requests()
        deliver(
            [
                (state.queue, _failure(state) if state.error else output)
                for state, output in delivered
                if state.queue is not None
            ]
        )

    def _drain_inbox(self) -> None:
        """Every command waiting, in order; a run of aborts goes to the engine as one (a
        hung-up client's 128 prompts end their 128 streams at once: one message, not 128
        for the engine process to read between its steps)."""
        aborts: list[str] = []
        notify = False
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                command = ("end",)
            kind = command[0]
            if kind == "abort" and (not aborts or command[2] == notify):
                aborts += command[1]
                notify = command[2]
                continue
            if aborts:
                self._abort(aborts, notify=notify)
                aborts = []
            if kind == "end":
                return
            if kind == "abort":  # one that notifies after some that do not, or the reverse
                aborts, notify = list(command[1]), command[2]
            elif kind == "add":
                self._add(command[1], command[2])
                # Counted as waiting in the engine before it stops counting as sent: the
                # bound may overcount for a moment, never undercount.
                self._num_engine_waiting = self.engine.get_num_waiting_requests()
                self._count_sent(-num_samples(command[1].params))
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
        with contextlib.suppress(Exception):  # the core may be gone: nothing left to abort
            self.engine.abort_request(list(external))
        self.engine.output_processor.abort_requests(list(external))
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


def _failure(state: RequestState) -> RequestFailedError | EngineOverloadedError:
    """A failed request's error for its caller: the request's own (a 400), an overload
    (503) or the engine's."""
    if state.error_cause == ErrorCause.OVERLOADED:
        return EngineOverloadedError(state.error)
    kind = RequestInputError if state.error_cause == ErrorCause.INPUT else RequestFailedError
    return kind(state.error)
