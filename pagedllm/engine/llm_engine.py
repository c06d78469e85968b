"""LLMEngine: the front end of one engine, driven synchronously by the offline ``LLM``.

It holds what runs beside the user's code: the tokenizer, input validation
(``InputProcessor``), output processing (detokenization, stop strings, output kinds, logprob
objects, ``n`` samples gathered) and the stat loggers. The engine core (scheduler + model
runner) sits behind an ``EngineCoreClient``: in its own process by default, in this one with
``PAGEDLLM_ENABLE_MULTIPROCESSING=0``. add_request() turns a prompt into one core request
per sample; step() takes the core's next outputs and returns the RequestOutputs they make.
``AsyncLLM`` drives the same pieces from a background thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pagedllm.config import EngineArgs, EngineConfig, UsageContext
from pagedllm.engine.core_client import EngineCoreClient, InprocClient, make_client
from pagedllm.engine.engine_process import PendingEngine, cancelled_on_error, start_early
from pagedllm.engine.heap import freeze_library_heap
from pagedllm.engine.messages import EngineCoreRequest, check_picklable
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.parent_request import ParentRequest, num_samples
from pagedllm.inputs.processor import InputProcessor, ProcessedPrompt, PromptType
from pagedllm.inputs.tokenizer import limit_tokenizer_threads, load_tokenizer
from pagedllm.metrics.stats import EngineSnapshot, LoggingStatLogger, StatLogger
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured_output.spec import GrammarSpec

if TYPE_CHECKING:
    from pagedllm.engine.core import EngineCore


@dataclass(frozen=True)
class PreparedRequest:
    """A validated, tokenized request, ready to enter the engine."""

    request_id: str
    prompt: ProcessedPrompt
    params: SamplingParams  # resolved: max_tokens set, stop ids complete
    arrival_time: float
    priority: int
    grammar: GrammarSpec | None = None  # structured outputs: the validated constraint


class LLMEngine:
    def __new__(cls, *args: Any, **kwargs: Any) -> LLMEngine:
        # Before the instance exists: a frozen engine could never be collected.
        freeze_library_heap()
        return super().__new__(cls)

    def __init__(
        self,
        config: EngineConfig,
        log_stats: bool | None = None,
        max_samples: int | None = None,
        client: EngineCoreClient | None = None,
        pending: PendingEngine | None = None,
    ) -> None:
        """``max_samples``: the largest n / best_of one request may ask for (a server's
        bound; None: any). ``client``: an engine core started elsewhere (API servers that
        share one); by default this engine starts its own, in ``pending`` if given (an
        engine process launched while the config was built)."""
        self.config = config
        self.model_config = config.model_config
        limit_tokenizer_threads(config.device)
        # First the engine core, which an engine process builds while this one loads the
        # tokenizer; then wait for it to report in (a given client already has).
        self.core = client if client is not None else make_client(config, pending)
        try:
            self.tokenizer = load_tokenizer(config.model_config)
            self.processor = InputProcessor(
                config.model_config, self.tokenizer, config.structured_outputs_config,
                max_samples,
            )  # fmt: skip
            self.output_processor = OutputProcessor(self.tokenizer)
            if client is None:
                self.core.wait_started()
        except BaseException:
            self.core.shutdown()
            raise
        log_stats = not config.disable_log_stats if log_stats is None else log_stats
        self.stat_loggers: list[StatLogger] = [LoggingStatLogger()] if log_stats else []
        self._snapshot = EngineSnapshot(0, 0, 0.0, 0, 0)  # the core's state, as last reported

    @property
    def engine_core(self) -> EngineCore:
        """The engine core itself, when it runs in this process."""
        core = getattr(self.core, "engine_core", None)
        if core is None:
            raise AttributeError(
                "The engine core runs in its own process; set PAGEDLLM_ENABLE_MULTIPROCESSING=0 "
                "to reach it directly, or use call_core()."
            )
        return core

    @classmethod
    def from_engine_args(
        cls, engine_args: EngineArgs, usage_context: UsageContext = UsageContext.ENGINE_CONTEXT
    ) -> LLMEngine:
        config, pending = start_early(engine_args, usage_context)
        with cancelled_on_error(pending):
            return cls(config, pending=pending)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    # -- requests ------------------------------------------------------------------------

    def prepare_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> PreparedRequest:
        """Tokenize and validate; touches no engine state (safe off the engine thread).
        Raises ValueError with a sentence for the user on bad input."""
        if not isinstance(params, SamplingParams):
            raise ValueError(
                f"sampling_params must be SamplingParams, got {type(params).__name__}."
            )
        if not isinstance(priority, int) or not -(2**63) <= priority < 2**63:
            # The engine's messages carry it as a 64-bit integer.
            raise ValueError(f"priority must be an integer in [-2**63, 2**63), got {priority!r}.")
        if priority != 0 and self.config.scheduler_config.policy != "priority":
            # As vLLM: under first-come-first-served a priority would be read and ignored.
            raise ValueError(
                f"priority={priority} needs priority scheduling, which is not enabled "
                "(--scheduling-policy priority)."
            )
        processed = self.processor.process_prompt(prompt, params)
        resolved = self.processor.process_params(params, len(processed.prompt_token_ids))
        if resolved.logits_processors and not isinstance(self.core, InprocClient):
            check_picklable(resolved)
        grammar = self.processor.process_structured_outputs(resolved)
        arrival_time = time.time() if arrival_time is None else arrival_time
        return PreparedRequest(request_id, processed, resolved, arrival_time, priority, grammar)

    def add_prepared(self, prepared: PreparedRequest, queue: Any = None) -> None:
        """Enqueue a prepared request: one core request per sample (``n``)."""
        request_id, params = prepared.request_id, prepared.params
        parent = ParentRequest(request_id, params) if num_samples(params) > 1 else None
        children = (
            [(request_id, params)]
            if parent is None
            else [(cid, parent.child_params(i)) for i, cid in enumerate(parent.child_ids)]
        )
        for rid in {request_id, *(cid for cid, _ in children)}:
            if self.output_processor.has_request(rid):
                raise ValueError(f"Request id {rid!r} is already in use by a live request.")
        prompt = prepared.prompt
        for index, (child_id, child_params) in enumerate(children):
            self.output_processor.add_request(
                child_id,
                parent,
                index,
                prompt.prompt,
                prompt.prompt_token_ids,
                child_params,
                prepared.arrival_time,
                queue,
            )
        for child_id, child_params in children:
            self.core.add_request(
                EngineCoreRequest(
                    child_id,
                    prompt.prompt_token_ids,
                    child_params,
                    self.processor.eos_token_id,
                    prepared.arrival_time,
                    prepared.priority,
                    prompt.cache_salt,
                )
            )

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> None:
        """Validate and enqueue one prompt. Raises ValueError (nothing enqueued) on bad input."""
        self.add_prepared(self.prepare_request(request_id, prompt, params, arrival_time, priority))

    def abort_request(self, request_ids: str | list[str]) -> None:
        self.abort_with_outputs([request_ids] if isinstance(request_ids, str) else request_ids)

    def abort_with_outputs(self, request_ids: list[str]) -> list[tuple[Any, RequestOutput]]:
        """Abort requests (unknown or finished ids are ignored); return each one's final
        output (finish_reason "abort") with its state, for streaming callers."""
        child_ids, finals = self.output_processor.abort_requests(list(request_ids))
        self.core.abort_requests(child_ids)
        return finals

    def has_unfinished_requests(self) -> bool:
        """Requests this front end still waits on (the core may have let one go already)."""
        return self.output_processor.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.output_processor.get_num_unfinished_requests()

    def get_num_waiting_requests(self) -> int:
        """Sequences the scheduler held waiting, as of its last report."""
        return self._snapshot.num_waiting

    # -- stepping ------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        return [output for _, output in self.step_with_states()]

    def step_with_states(
        self, wake_fd: int | None = None, timeout: float | None = None
    ) -> list[tuple[Any, RequestOutput]]:
        """The core's next step: the RequestOutputs it makes, each with its request's state.
        With ``wake_fd`` or ``timeout``, returns nothing early when the fd turns readable
        or the time passes."""
        batch = self.core.get_outputs(wake_fd, timeout)
        if batch is None:
            return []
        self._snapshot = batch.snapshot
        delivered, stopped = self.output_processor.process_outputs(batch.outputs, batch.iteration)
        if stopped:
            self.core.abort_requests(stopped)
        for stat_logger in self.stat_loggers:
            stat_logger.record(batch.iteration, batch.snapshot)
        return delivered

    def call_core(self, name: str, *args: Any) -> Any:
        """Run one of the engine core's utilities (``engine.core.UTILITIES``) and return its
        result, wherever the core runs."""
        return self.core.call_utility(name, *args)

    def kv_cache_state(self) -> dict[str, Any]:
        """The core's block pool, checked: free and total blocks, and more (tests use it)."""
        return self.call_core("kv_cache_state")

    def reset_prefix_cache(self) -> bool:
        return self.call_core("reset_prefix_cache")

    def shutdown(self) -> None:
        """Stop the engine core (its process, when it has one)."""
        self.core.shutdown()
