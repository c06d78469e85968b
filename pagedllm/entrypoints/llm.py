"""The offline ``LLM`` API, as in vLLM: ``LLM(model=...).generate(prompts, params)``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from pagedllm.beam_search import (
    BeamSearchOutput,
    BeamSearchSequence,
    BeamSearchState,
    prompt_ids_of,
    step_params,
)
from pagedllm.config import EngineArgs, UsageContext
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.inputs.chat import prepare_chat, render_chat
from pagedllm.inputs.processor import PromptType
from pagedllm.metrics.prometheus import PrometheusStatLogger
from pagedllm.metrics.reader import Metric, metrics_snapshot
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

# Keys of generation_config.json that become default sampling parameters.
_GENERATION_DEFAULTS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def generation_defaults(generation_config: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams keyword defaults taken from a model's generation_config.json."""
    return {
        ours: generation_config[theirs]
        for theirs, ours in _GENERATION_DEFAULTS.items()
        if generation_config.get(theirs) is not None
    }


class LLM:
    """Generate text for a batch of prompts with one engine.

    Every keyword is an ``EngineArgs`` field (vLLM's names); an unknown keyword is a
    TypeError and a known but unsupported one a ValueError naming it.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("disable_log_stats", True)
        unknown = set(kwargs) - EngineArgs.field_names()
        if unknown:
            raise TypeError(f"LLM got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        self.engine_args = EngineArgs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(self.engine_args, UsageContext.LLM_CLASS)
        self._counter = itertools.count()
        self._prometheus: PrometheusStatLogger | None = None
        if not self.engine_args.disable_log_stats:  # as vLLM: get_metrics() needs stats on
            config = self.llm_engine.config
            self._prometheus = PrometheusStatLogger(
                config.model_config.model, config.model_config.max_model_len, config.cache_config
            )
            self.llm_engine.stat_loggers.append(self._prometheus)

    # -- accessors -----------------------------------------------------------------------

    def get_tokenizer(self) -> Any:
        return self.llm_engine.get_tokenizer()

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams from the model's generation_config.json, as vLLM does."""
        config = self.llm_engine.model_config.generation_config
        values = {
            ours: config[theirs]
            for theirs, ours in _GENERATION_DEFAULTS.items()
            if theirs in config
        }
        return SamplingParams(**values)

    def reset_prefix_cache(self) -> bool:
        return self.llm_engine.reset_prefix_cache()

    def get_metrics(self) -> list[Metric]:
        """The engine's metrics now (the server's ``/metrics`` series: counters, gauges,
        histograms, as ``pagedllm.metrics.reader`` objects). Needs
        ``LLM(..., disable_log_stats=False)``, as in vLLM."""
        if self._prometheus is None:
            raise ValueError(
                "get_metrics() needs engine statistics: create the LLM with "
                "disable_log_stats=False."
            )
        return metrics_snapshot(self._prometheus.registry)

    # -- generation ----------------------------------------------------------------------

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        priority: list[int] | None = None,
    ) -> list[RequestOutput]:
        """Complete each prompt; outputs come back in the order of the prompts."""
        if lora_request is not None:
            raise ValueError("lora_request is not supported by pagedllm yet.")
        prompt_list = _as_list(prompts)
        params_list = self._params_for(prompt_list, sampling_params)
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError(
                f"priority has {len(priority)} entries but there are {len(prompt_list)} prompts."
            )
        self._add_requests(prompt_list, params_list, priority)
        return self._run_engine(use_tqdm, len(prompt_list))

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Apply the chat template to one conversation or a list of them, then generate."""
        if chat_template_content_format not in ("auto", "string", "openai"):
            raise ValueError(
                "chat_template_content_format must be 'auto', 'string' or 'openai', got "
                f"{chat_template_content_format!r}."
            )
        if mm_processor_kwargs:
            raise ValueError("mm_processor_kwargs is not supported: pagedllm serves text models.")
        is_batch = bool(messages) and isinstance(messages[0], list)
        conversations = messages if is_batch else [messages]
        tokenizer = self.get_tokenizer()
        prompts: list[PromptType] = []
        for conversation in conversations:
            job = prepare_chat(
                tokenizer,
                conversation,  # type: ignore[arg-type]
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                chat_template_kwargs=chat_template_kwargs,
            )
            text = render_chat(job)
            # The template already holds any BOS token: do not add special tokens again.
            ids = tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm, lora_request)

    def beam_search(
        self,
        prompts: list[PromptType],
        params: BeamSearchParams,
        lora_request: Any = None,
        use_tqdm: bool = False,
        concurrency_limit: int | None = None,
    ) -> list[BeamSearchOutput]:
        """Beam search for each prompt (see ``pagedllm.beam_search``); each output holds up to
        ``beam_width`` sequences, best first, ``text`` decoded from prompt and completion."""
        if lora_request is not None:
            raise ValueError("lora_request is not supported by pagedllm yet.")
        tokenizer = self.get_tokenizer()
        eos = self.llm_engine.processor.eos_token_id
        states = [BeamSearchState(prompt_ids_of(p, tokenizer), params, eos) for p in prompts]
        step_sampling = step_params(params)
        max_len = self.llm_engine.model_config.max_model_len
        limit = concurrency_limit or len(states)
        for start in range(0, len(states), limit):
            self._run_beam_steps(states[start : start + limit], step_sampling, max_len)

        def decode(beam: BeamSearchSequence) -> str:
            return tokenizer.decode(beam.tokens, skip_special_tokens=True) if tokenizer else ""

        return [state.result(decode) for state in states]

    def _run_beam_steps(
        self, states: list[BeamSearchState], sampling: SamplingParams, max_model_len: int
    ) -> None:
        step = 0
        while True:
            growing = [s for s in states if s.beams and s.can_grow(step, max_model_len)]
            if not growing:
                return
            prompts: list[PromptType] = [
                {"prompt_token_ids": beam.tokens} for s in growing for beam in s.beams
            ]
            outputs = self.generate(prompts, sampling, use_tqdm=False)
            offset = 0
            for state in growing:
                count = len(state.beams)
                state.advance(outputs[offset : offset + count])
                offset += count
            step += 1

    # -- helpers -------------------------------------------------------------------------

    def _params_for(
        self,
        prompts: list[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
    ) -> list[SamplingParams]:
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"Got {len(params_list)} SamplingParams for {len(prompts)} prompts; pass one "
                    "for all or one per prompt."
                )
        finals = []
        for params in params_list:
            final = params.clone()
            final.output_kind = RequestOutputKind.FINAL_ONLY
            finals.append(final)
        return finals

    def _add_requests(
        self,
        prompts: list[PromptType],
        params: list[SamplingParams],
        priority: list[int] | None,
    ) -> None:
        added: list[str] = []
        try:
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                request_id = str(next(self._counter))
                self.llm_engine.add_request(
                    request_id, prompt, sp, priority=priority[i] if priority else 0
                )
                added.append(request_id)
        except Exception:
            self.llm_engine.abort_request(added)  # all or nothing
            raise

    def _run_engine(
        self, use_tqdm: bool | Callable[..., tqdm], num_prompts: int
    ) -> list[RequestOutput]:
        engine = self.llm_engine
        bar = _progress_bar(use_tqdm, num_prompts)
        finished: list[RequestOutput] = []
        prompt_tokens = output_tokens = 0
        start = time.perf_counter()
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if not output.finished:
                        continue
                    finished.append(output)
                    if bar is not None:
                        prompt_tokens += len(output.prompt_token_ids or [])
                        output_tokens += sum(len(c.token_ids) for c in output.outputs)
                        elapsed = time.perf_counter() - start
                        bar.postfix = (
                            f"est. speed input: {prompt_tokens / elapsed:.2f} toks/s, "
                            f"output: {output_tokens / elapsed:.2f} toks/s"
                        )
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return sorted(finished, key=lambda o: int(o.request_id))


def _as_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompt_list = list(prompts)
    if not prompt_list:
        raise ValueError("No prompts given.")
    return prompt_list


def _progress_bar(use_tqdm: bool | Callable[..., tqdm], total: int) -> tqdm | None:
    if not use_tqdm:
        return None
    factory = use_tqdm if callable(use_tqdm) else tqdm
    return factory(
        total=total,
        desc="Processed prompts",
        dynamic_ncols=True,
        postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s",
    )
