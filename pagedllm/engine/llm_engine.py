"""LLMEngine: the synchronous engine the offline ``LLM`` drives.

add_request() turns a prompt into one core request per sample (``n``), step() runs one
engine step and returns the RequestOutputs it produced. ``AsyncLLM`` drives the same
pieces from a background thread.
"""

from __future__ import annotations

import atexit
import gc
import time
from dataclasses import dataclass
from typing import Any

from pagedllm import envs
from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.core.request import Request
from pagedllm.engine.core import EngineCore
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.parent_request import ParentRequest, num_samples
from pagedllm.inputs.processor import InputProcessor, ProcessedPrompt, PromptType
from pagedllm.inputs.tokenizer import load_tokenizer
from pagedllm.metrics.stats import IterationStats, LoggingStatLogger, StatLogger
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured_output.manager import StructuredOutputManager
from pagedllm.structured_output.spec import GrammarSpec


@dataclass(frozen=True)
class PreparedRequest:
    """A validated, tokenized request, ready to enter the engine."""

    request_id: str
    prompt: ProcessedPrompt
    params: SamplingParams  # resolved: max_tokens set, stop ids complete
    arrival_time: float
    priority: int
    grammar: GrammarSpec | None = None  # structured outputs: the validated constraint


_heap_frozen = False


def _freeze_library_heap() -> None:
    """Once per process, before the first engine builds anything: move what exists (the
    modules of torch, transformers and the rest, ~97% of the objects an engine process
    holds) out of the garbage collector's generations, so the full collections that each
    step's output objects trigger do not traverse it (ms per step with logprobs on).
    Engines themselves stay collectable: deleting one frees it as before."""
    global _heap_frozen
    if _heap_frozen or not envs.freeze_gc():
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()
    # Thawed at exit, so the interpreter's last collection still finalizes these objects
    # (native extensions report what is never freed as leaks).
    atexit.register(gc.unfreeze)


class LLMEngine:
    def __new__(cls, *args: Any, **kwargs: Any) -> LLMEngine:
        # Before the instance exists: a frozen engine could never be collected.
        _freeze_library_heap()
        return super().__new__(cls)

    def __init__(
        self,
        config: EngineConfig,
        log_stats: bool | None = None,
        max_samples: int | None = None,
    ) -> None:
        """``max_samples``: the largest n / best_of one request may ask for (a server's
        bound; None: any)."""
        self.config = config
        self.model_config = config.model_config
        self.tokenizer = load_tokenizer(config.model_config)
        self.processor = InputProcessor(
            config.model_config, self.tokenizer, config.structured_outputs_config, max_samples
        )
        self.engine_core = EngineCore(config)
        self.output_processor = OutputProcessor(self.tokenizer)
        log_stats = not config.disable_log_stats if log_stats is None else log_stats
        self.stat_loggers: list[StatLogger] = [LoggingStatLogger()] if log_stats else []

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        return cls(engine_args.create_engine_config())

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
        if not isinstance(priority, int):
            raise ValueError(f"priority must be an integer, got {priority!r}.")
        processed = self.processor.process_prompt(prompt, params)
        resolved = self.processor.process_params(params, len(processed.prompt_token_ids))
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
            request = Request(
                child_id,
                prompt.prompt_token_ids,
                child_params,
                self.processor.eos_token_id,
                prepared.arrival_time,
                prepared.priority,
                prompt.cache_salt,
            )
            if prepared.grammar is not None:
                request.structured_output = self._structured_outputs().request_grammar(
                    prepared.grammar
                )
            self.engine_core.add_request(request)

    def _structured_outputs(self) -> StructuredOutputManager:
        """Made on first use, so engines that never constrain output never import xgrammar."""
        core = self.engine_core
        if core.structured_outputs is None:
            eos = self.model_config.generation_config.get("eos_token_id")
            stops = {self.processor.eos_token_id} | set(
                [eos] if isinstance(eos, int) else eos or []
            )
            core.structured_outputs = StructuredOutputManager(
                self.tokenizer,
                self.model_config.vocab_size,
                sorted(t for t in stops if t is not None),
                pin_memory=self.config.device == "cuda",
            )
        return core.structured_outputs

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
        self.engine_core.abort_requests(child_ids)
        return finals

    def has_unfinished_requests(self) -> bool:
        return self.engine_core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.engine_core.scheduler.get_num_unfinished_requests()

    def get_num_waiting_requests(self) -> int:
        return len(self.engine_core.scheduler.waiting)

    # -- stepping ------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        return [output for _, output in self.step_with_states()]

    def step_with_states(self) -> list[tuple[Any, RequestOutput]]:
        """One engine step; the RequestOutputs produced, each with its request's state."""
        core_outputs, iteration = self.engine_core.step()
        delivered, stopped = self.output_processor.process_outputs(core_outputs, iteration)
        if stopped:
            self.engine_core.abort_requests(stopped)
        if self.stat_loggers:
            snapshot = self.engine_core.snapshot()
            for stat_logger in self.stat_loggers:
                stat_logger.record(iteration, snapshot)
        return delivered

    def record_stats(self) -> None:
        """Report the current state to the stat loggers without stepping (used when idle)."""
        if self.stat_loggers:
            iteration = IterationStats()
            self.output_processor.process_outputs([], iteration)
            snapshot = self.engine_core.snapshot()
            for stat_logger in self.stat_loggers:
                stat_logger.record(iteration, snapshot)

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()
