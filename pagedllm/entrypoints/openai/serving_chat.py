"""``POST /v1/chat/completions``: messages -> chat template -> AsyncLLM -> OpenAI shapes."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.beam_search import BeamSearchOutput
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.entrypoints.openai import sse
from pagedllm.entrypoints.openai.chat_renderer import ChatRenderer
from pagedllm.entrypoints.openai.errors import from_value_error, sse_error
from pagedllm.entrypoints.openai.logprobs_format import chat_logprobs, prompt_logprobs_json
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    request_ids,
)
from pagedllm.entrypoints.openai.reasoning import ReasoningParser
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.streams import last_output, streamed_response
from pagedllm.entrypoints.openai.tool_choice import ToolChoice, plan_tool_choice
from pagedllm.entrypoints.openai.tool_parsers import ToolParser, ToolStream
from pagedllm.entrypoints.openai.usage import (
    beam_usage,
    clamp_max_tokens,
    usage_of,
)
from pagedllm.inputs.prompts import truncate_prompt
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import StructuredOutputsParams


@dataclass(frozen=True)
class ChatOptions:
    """Server-wide choices for every chat request (vLLM's serve flags of these names)."""

    response_role: str = "assistant"  # --response-role
    force_include_usage: bool = False  # --enable-force-include-usage: usage ends every stream
    prompt_tokens_details: bool = False  # --enable-prompt-tokens-details: cached tokens shown
    tokens_as_ids: bool = False  # --return-tokens-as-token-ids: logprob tokens as token_id:N


class ChatHandler:
    def __init__(
        self,
        engine: AsyncLLM,
        models: ServedModels,
        renderer: ChatRenderer,
        reasoning_parser: type[ReasoningParser] | None,
        generation_defaults: dict[str, Any],
        tool_parser: type[ToolParser] | None = None,
        exclude_tools_when_tool_choice_none: bool = False,
        options: ChatOptions | None = None,
    ) -> None:
        self.engine = engine
        self.models = models
        self.renderer = renderer
        self.reasoning_parser = reasoning_parser
        self.defaults = generation_defaults
        self.tool_parser = tool_parser  # set when auto tool choice is enabled
        self.exclude_tools_when_none = exclude_tools_when_tool_choice_none
        self.options = options or ChatOptions()

    async def create(self, request: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        model = self.models.resolve(request.model)
        request.refuse_unbuilt_chat_fields()
        stream = bool(request.stream)
        request_id, engine_id = request_ids(request.request_id, "chatcmpl")
        try:
            tools = plan_tool_choice(
                request.tools, request.tool_choice, request.parallel_tool_calls, self.tool_parser
            )
            prompt, prompt_ids = await self._render(request, tools)
            prompt_ids = truncate_prompt(
                prompt_ids, request.truncate_prompt_tokens, self.models.max_model_len
            )
            engine_prompt: dict[str, Any] = {"prompt": prompt, "prompt_token_ids": prompt_ids}
            if request.salt() is not None:
                engine_prompt["cache_salt"] = request.salt()
            max_tokens = clamp_max_tokens(
                request.max_tokens
                if request.max_completion_tokens is None
                else request.max_completion_tokens,  # 0 is refused, not read as unset
                len(prompt_ids),
                self.models.max_model_len,
            )
            constraint = _constraint(request, tools)
            if request.use_beam_search:
                if tools.calls_tools:
                    raise ValueError("use_beam_search cannot be combined with tool calls.")
                beams = request.beam_search_params(max_tokens, stream)
                result = await self.engine.beam_search(engine_prompt, engine_id, beams)
                return JSONResponse(_beam_response(request_id, model, prompt_ids, result))
            params = request.sampling_params(
                max_tokens, request.requested_logprobs(), stream, self.defaults, constraint
            )
            if tools.needs_special_tokens:
                params.skip_special_tokens = False
            prepared = await self.engine.prepare(
                engine_prompt, params, engine_id, priority=request.priority
            )
            outputs = self.engine.generate_prepared(prepared)
        except ValueError as exc:
            raise from_value_error(exc) from exc
        opened = bool(self.reasoning_parser and self.reasoning_parser.prompt_opens_think(prompt))
        prefix = self._echo_prefix(request)
        if stream:
            chunks = self._stream(request, request_id, model, outputs, opened, prefix, tools)
            return streamed_response(chunks)
        final = await last_output(outputs)
        response = self._response(request, request_id, model, final, opened, prefix, tools)
        return JSONResponse(response.model_dump())

    async def prompt_token_ids(self, request: ChatCompletionRequest) -> list[int]:
        """The prompt ``create`` would run for this request, unrun (Anthropic's
        count_tokens): the same checks and render, so the two counts cannot drift."""
        self.models.resolve(request.model)
        tools = plan_tool_choice(
            request.tools, request.tool_choice, request.parallel_tool_calls, self.tool_parser
        )
        return (await self._render(request, tools))[1]

    async def _render(
        self, request: ChatCompletionRequest, tools: ToolChoice
    ) -> tuple[str, list[int]]:
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        hide_tools = tools.mode == "none" and self.exclude_tools_when_none
        truncated = request.truncate_prompt_tokens is not None
        prompt = await self.renderer.render(
            messages,
            request.chat_template,
            request.add_generation_prompt,
            request.continue_final_message,
            None if hide_tools or not tools.tools else tools.tools,
            request.template_kwargs(),
            keep_tail=truncated,
        )
        return prompt, await self.renderer.encode(prompt, request.add_special_tokens, truncated)

    @staticmethod
    def _echo_prefix(request: ChatCompletionRequest) -> str:
        """With ``echo``, a continued assistant message is returned with what it began with."""
        last = request.messages[-1]
        if request.echo and last.role == "assistant" and isinstance(last.content, str):
            return last.content
        return ""

    def _split(self, text: str, opened: bool) -> tuple[str | None, str | None]:
        if self.reasoning_parser is None:
            return None, text
        return self.reasoning_parser.extract(text, opened)

    # -- full response -------------------------------------------------------------------

    def _response(
        self,
        request: ChatCompletionRequest,
        request_id: str,
        model: str,
        final: RequestOutput,
        opened: bool,
        prefix: str,
        tools: ToolChoice,
    ) -> ChatCompletionResponse:
        choices = []
        top = request.top_logprobs or 0
        as_ids = request.tokens_as_ids(self.options.tokens_as_ids)
        for completion in final.outputs:
            reasoning, content = self._split(completion.text, opened)
            reasoning = reasoning if request.include_reasoning else None
            calls: list[dict[str, Any]] = []
            if tools.calls_tools:
                found = tools.extract(content or "")
                content, calls = found.content or None, [c.as_json() for c in found.calls]
            message = ChatCompletionMessage(
                role=self.options.response_role,
                content=prefix + (content or "") if prefix else content,
                reasoning=reasoning,
                reasoning_content=reasoning,  # the older name; clients read either
                tool_calls=calls,
            )
            choices.append(
                ChatCompletionChoice(
                    index=completion.index,
                    message=message,
                    logprobs=chat_logprobs(completion.token_ids, completion.logprobs, top, as_ids),
                    finish_reason=_finish_reason(completion.finish_reason, bool(calls), tools),
                    stop_reason=completion.stop_reason,
                    token_ids=list(completion.token_ids) if request.return_token_ids else None,
                )
            )
        return ChatCompletionResponse(
            id=request_id,
            model=model,
            choices=choices,
            usage=usage_of(final, final.outputs, details=self.options.prompt_tokens_details),
            prompt_logprobs=prompt_logprobs_json(final.prompt_logprobs),
            prompt_token_ids=final.prompt_token_ids if request.return_token_ids else None,
            metadata=request.metadata,
        )

    # -- streaming -----------------------------------------------------------------------

    async def _stream(
        self,
        request: ChatCompletionRequest,
        request_id: str,
        model: str,
        outputs: AsyncGenerator[RequestOutput, None],
        opened: bool,
        prefix: str,
        tools: ToolChoice,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        n = request.n or 1
        parsers = [
            _ChoiceStream(self.reasoning_parser(opened) if self.reasoning_parser else None,
                          tools.stream(), request.include_reasoning)
            for _ in range(n)
        ]  # fmt: skip
        include_usage = self.options.force_include_usage or bool(
            request.stream_options and request.stream_options.include_usage
        )
        continuous = bool(request.stream_options and request.stream_options.continuous_usage_stats)
        tokens = [0] * n
        last: RequestOutput | None = None

        with_ids = bool(request.return_token_ids)
        prompt_ids_sent = False

        def chunk(choices: list[dict[str, Any]], usage: Any = None, **extra: Any) -> bytes:
            # The shape of ChatCompletionStreamResponse, built as a dict (one per token).
            return sse.event({
                "id": request_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices,
                "usage": usage.model_dump() if include_usage and usage is not None else None,
                **extra,
            })  # fmt: skip

        try:
            for i in range(n):
                yield chunk([_choice(i, {"role": self.options.response_role, "content": prefix})])
            top = request.top_logprobs or 0
            as_ids = request.tokens_as_ids(self.options.tokens_as_ids)
            async for output in outputs:
                last = output
                for completion in output.outputs:
                    i = completion.index
                    tokens[i] += len(completion.token_ids)
                    delta = parsers[i].delta(completion.text, completion.finished())
                    logprobs = chat_logprobs(completion.token_ids, completion.logprobs, top, as_ids)
                    if delta is None and not completion.finished() and not logprobs:
                        continue
                    called = parsers[i].called_tools
                    finish = _finish_reason(completion.finish_reason, called, tools)
                    choice = _choice(i, delta or {}, finish, completion.stop_reason, logprobs)
                    usage = (
                        usage_of(output, None, sum(tokens), self.options.prompt_tokens_details)
                        if continuous
                        else None
                    )
                    extra: dict[str, Any] = {}
                    if with_ids:  # as vLLM: the prompt's ids once, each chunk its new ids
                        choice["token_ids"] = list(completion.token_ids)
                        if not prompt_ids_sent:
                            extra["prompt_token_ids"] = list(output.prompt_token_ids or [])
                            prompt_ids_sent = True
                    yield chunk([choice], usage, **extra)
            if include_usage and last is not None:
                yield chunk(
                    [], usage_of(last, None, sum(tokens), self.options.prompt_tokens_details)
                )
        except Exception as exc:
            yield sse_error(exc)
        yield sse.DONE


def _choice(
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    stop_reason: int | str | None = None,
    logprobs: Any = None,
) -> dict[str, Any]:
    """A ChatCompletionStreamChoice as a dict; ``delta`` holds only the fields set (clients
    test ``hasattr(delta, "reasoning")``)."""
    return {
        "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }  # fmt: skip


def _constraint(
    request: ChatCompletionRequest, tools: ToolChoice
) -> StructuredOutputsParams | None:
    """The request's output constraint: its own, or the one its tool choice needs."""
    own = request.structured_outputs_params()
    needed = tools.structured_outputs()
    if own is not None and needed is not None:
        raise ValueError(
            f"tool_choice {tools.mode!r} constrains the output itself; it cannot be combined "
            "with response_format or structured outputs."
        )
    return needed or own


def _finish_reason(reason: str | None, called_tools: bool, tools: ToolChoice) -> str | None:
    """OpenAI's (and vLLM's) "tool_calls" when the model stopped after calling tools by its
    choice ("auto") or by "required"; a named tool choice forces the call and ends in
    "stop"."""
    forced = tools.mode == "named"
    return "tool_calls" if called_tools and reason == "stop" and not forced else reason


class _ChoiceStream:
    """One choice's stream: text -> reasoning / content (reasoning parser) -> content / tool
    calls (tool stream)."""

    def __init__(
        self, reasoning: ReasoningParser | None, tools: ToolStream | None, include_reasoning: bool
    ) -> None:
        self._reasoning = reasoning
        self._tools = tools
        self._include_reasoning = include_reasoning  # False: parsed, then dropped
        self.called_tools = False

    def delta(self, text: str, finished: bool) -> dict[str, Any] | None:
        """The delta message (only its set fields) for new text; None when there is
        nothing to send yet."""
        reasoning, content = "", text
        if self._reasoning is not None:
            reasoning, content = self._reasoning.feed(text)
            if finished:
                tail_reasoning, tail_content = self._reasoning.finish()
                reasoning, content = reasoning + tail_reasoning, content + tail_content
        calls: list[dict[str, Any]] = []
        if self._tools is not None:
            found = self._tools.feed(content)
            if finished:
                found += self._tools.finish()
            content, calls = found.content, [c.as_json() for c in found.calls]
            self.called_tools = self.called_tools or bool(calls)
        reasoning = reasoning if self._include_reasoning else ""
        if not reasoning and not content and not calls:
            return None
        delta: dict[str, Any] = {}
        if reasoning:  # vLLM 0.26's name and the older one: clients read either
            delta["reasoning"] = delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = calls
        return delta


def _beam_response(
    request_id: str, model: str, prompt_ids: list[int], result: BeamSearchOutput
) -> dict[str, Any]:
    choices = [
        ChatCompletionChoice(
            index=i,
            message=ChatCompletionMessage(content=beam.text),
            finish_reason=beam.finish_reason,
        )
        for i, beam in enumerate(result.sequences)
    ]
    usage = beam_usage(len(prompt_ids), result)
    return ChatCompletionResponse(
        id=request_id, model=model, choices=choices, usage=usage
    ).model_dump()
