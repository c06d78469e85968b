"""LLMEngine: the synchronous engine the offline ``LLM`` drives.

add_request() turns a prompt into one core request per sample (``n``), step() runs one
engine step and returns the RequestOutputs it produced. ``AsyncLLM`` drives the same
pieces from a background thread.
"""

from __future__ import annotations

import time
from typing import Any

from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.core.request import Request
from pagedllm.engine.core import EngineCore
from pagedllm.engine.output_processor import OutputProcessor, ParentRequest
from pagedllm.inputs.processor import InputProcessor, PromptType
from pagedllm.inputs.tokenizer import load_tokenizer
from pagedllm.metrics.stats import LoggingStatLogger
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams


class LLMEngine:
    def __init__(self, config: EngineConfig, log_stats: bool | None = None) -> None:
        self.config = config
        self.model_config = config.model_config
        self.tokenizer = load_tokenizer(config.model_config)
        self.processor = InputProcessor(config.model_config, self.tokenizer)
        self.engine_core = EngineCore(config)
        self.output_processor = OutputProcessor(self.tokenizer)
        log_stats = not config.disable_log_stats if log_stats is None else log_stats
        self.stat_logger = LoggingStatLogger() if log_stats else None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        return cls(engine_args.create_engine_config())

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    # -- requests ------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        queue: Any = None,
    ) -> None:
        """Validate and enqueue one prompt. Raises ValueError (nothing enqueued) on bad input."""
        if not isinstance(params, SamplingParams):
            raise ValueError(
                f"sampling_params must be SamplingParams, got {type(params).__name__}."
            )
        if not isinstance(priority, int):
            raise ValueError(f"priority must be an integer, got {priority!r}.")
        arrival_time = time.time() if arrival_time is None else arrival_time
        processed = self.processor.process_prompt(prompt, params)
        resolved = self.processor.process_params(params, len(processed.prompt_token_ids))
        parent = ParentRequest(request_id, resolved) if resolved.n > 1 else None
        children = (
            [(request_id, resolved)]
            if parent is None
            else [(cid, parent.child_params(i)) for i, cid in enumerate(parent.child_ids)]
        )
        for rid in {request_id, *(cid for cid, _ in children)}:
            if self.output_processor.has_request(rid):
                raise ValueError(f"Request id {rid!r} is already in use by a live request.")
        for index, (child_id, child_params) in enumerate(children):
            self.output_processor.add_request(
                child_id,
                parent,
                index,
                processed.prompt,
                processed.prompt_token_ids,
                child_params,
                arrival_time,
                queue,
            )
            self.engine_core.add_request(
                Request(
                    child_id,
                    processed.prompt_token_ids,
                    child_params,
                    self.processor.eos_token_id,
                    arrival_time,
                    priority,
                    processed.cache_salt,
                )
            )

    def abort_request(self, request_ids: str | list[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        self.engine_core.abort_requests(self.output_processor.abort_requests(ids))

    def has_unfinished_requests(self) -> bool:
        return self.engine_core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.engine_core.scheduler.get_num_unfinished_requests()

    # -- stepping ------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        return [output for _, output in self.step_with_states()]

    def step_with_states(self) -> list[tuple[Any, RequestOutput]]:
        """One engine step; the RequestOutputs produced, each with its request's state."""
        core_outputs, iteration = self.engine_core.step()
        delivered, stopped = self.output_processor.process_outputs(core_outputs)
        if stopped:
            self.engine_core.abort_requests(stopped)
        if self.stat_logger is not None:
            self.stat_logger.record(iteration, self.engine_core.snapshot())
        return delivered

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()
