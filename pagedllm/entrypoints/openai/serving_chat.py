"""``POST /v1/chat/completions``: messages -> chat template -> AsyncLLM -> OpenAI shapes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.beam_search import BeamSearchOutput
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.entrypoints.openai.errors import from_value_error, sse_error
from pagedllm.entrypoints.openai.logprobs_format import chat_logprobs, prompt_logprobs_json
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    random_id,
)
from pagedllm.entrypoints.openai.reasoning import ReasoningParser
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.streams import last_output
from pagedllm.entrypoints.openai.usage import beam_usage, clamp_max_tokens, usage_of
from pagedllm.inputs.chat import apply_chat_template
from pagedllm.outputs import RequestOutput


class ChatHandler:
    def __init__(
        self,
        engine: AsyncLLM,
        models: ServedModels,
        chat_template: str | None,
        reasoning_parser: type[ReasoningParser] | None,
        generation_defaults: dict[str, Any],
    ) -> None:
        self.engine = engine
        self.models = models
        self.chat_template = chat_template
        self.reasoning_parser = reasoning_parser
        self.defaults = generation_defaults

    async def create(self, request: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        model = self.models.resolve(request.model)
        request.refuse_unbuilt_chat_fields()
        stream = bool(request.stream)
        request_id = random_id("chatcmpl") if request.request_id is None else request.request_id
        try:
            prompt, prompt_ids = self._render(request)
            engine_prompt: dict[str, Any] = {"prompt": prompt, "prompt_token_ids": prompt_ids}
            if request.cache_salt is not None:
                engine_prompt["cache_salt"] = request.cache_salt
            max_tokens = clamp_max_tokens(
                request.max_completion_tokens or request.max_tokens,
                len(prompt_ids),
                self.models.max_model_len,
            )
            if request.use_beam_search:
                beams = request.beam_search_params(max_tokens, stream)
                result = await self.engine.beam_search(engine_prompt, request_id, beams)
                return JSONResponse(_beam_response(request_id, model, prompt_ids, result))
            params = request.sampling_params(
                max_tokens, request.requested_logprobs(), stream, self.defaults
            )
            outputs = self.engine.generate(
                engine_prompt, params, request_id, priority=request.priority
            )
        except ValueError as exc:
            raise from_value_error(exc) from exc
        opened = bool(self.reasoning_parser and self.reasoning_parser.prompt_opens_think(prompt))
        prefix = self._echo_prefix(request)
        if stream:
            chunks = self._stream(request, request_id, model, outputs, opened, prefix)
            return StreamingResponse(chunks, media_type="text/event-stream")
        final = await last_output(outputs)
        response = self._response(request, request_id, model, final, opened, prefix)
        return JSONResponse(response.model_dump())

    def _render(self, request: ChatCompletionRequest) -> tuple[str, list[int]]:
        tokenizer = self.engine.tokenizer
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        prompt = apply_chat_template(
            tokenizer,
            messages,
            chat_template=request.chat_template or self.chat_template,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            chat_template_kwargs=request.chat_template_kwargs,
        )
        return prompt, tokenizer.encode(prompt, add_special_tokens=request.add_special_tokens)

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
    ) -> ChatCompletionResponse:
        choices = []
        top = request.top_logprobs or 0
        for completion in final.outputs:
            reasoning, content = self._split(completion.text, opened)
            message = ChatCompletionMessage(
                content=prefix + (content or "") if prefix else content,
                reasoning_content=reasoning,
            )
            choices.append(
                ChatCompletionChoice(
                    index=completion.index,
                    message=message,
                    logprobs=chat_logprobs(completion.token_ids, completion.logprobs, top),
                    finish_reason=completion.finish_reason,
                    stop_reason=completion.stop_reason,
                )
            )
        return ChatCompletionResponse(
            id=request_id,
            model=model,
            choices=choices,
            usage=usage_of(final, final.outputs),
            prompt_logprobs=prompt_logprobs_json(final.prompt_logprobs),
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
    ) -> AsyncIterator[str]:
        created = int(time.time())
        n = request.n or 1
        parsers = [
            self.reasoning_parser(opened) if self.reasoning_parser else None for _ in range(n)
        ]
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        continuous = bool(request.stream_options and request.stream_options.continuous_usage_stats)
        tokens = [0] * n
        last: RequestOutput | None = None

        def chunk(choices: list[ChatCompletionStreamChoice], usage: Any = None) -> str:
            body = ChatCompletionStreamResponse(
                id=request_id, created=created, model=model, choices=choices
            ).model_dump(mode="json")
            for choice, raw in zip(choices, body["choices"]):
                raw["delta"] = choice.delta.model_dump(exclude_none=True)
            if include_usage:
                body["usage"] = usage.model_dump() if usage is not None else None
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            for i in range(n):
                yield chunk([_choice(i, DeltaMessage(role="assistant", content=prefix))])
            top = request.top_logprobs or 0
            async for output in outputs:
                last = output
                for completion in output.outputs:
                    i = completion.index
                    tokens[i] += len(completion.token_ids)
                    delta = _delta(parsers[i], completion.text, completion.finished())
                    logprobs = chat_logprobs(completion.token_ids, completion.logprobs, top)
                    if delta is None and not completion.finished() and not logprobs:
                        continue
                    choice = _choice(
                        i, delta or DeltaMessage(), completion.finish_reason, completion.stop_reason
                    )
                    choice.logprobs = logprobs
                    usage = usage_of(output, None, sum(tokens)) if continuous else None
                    yield chunk([choice], usage)
            if include_usage and last is not None:
                yield chunk([], usage_of(last, None, sum(tokens)))
        except Exception as exc:
            yield sse_error(exc)
        yield "data: [DONE]\n\n"


def _choice(
    index: int,
    delta: DeltaMessage,
    finish_reason: str | None = None,
    stop_reason: int | str | None = None,
) -> ChatCompletionStreamChoice:
    return ChatCompletionStreamChoice(
        index=index, delta=delta, finish_reason=finish_reason, stop_reason=stop_reason
    )


def _delta(parser: ReasoningParser | None, text: str, finished: bool) -> DeltaMessage | None:
    """The delta message for new text; None when there is nothing to send yet."""
    if parser is None:
        return DeltaMessage(content=text) if text else None
    reasoning, content = parser.feed(text)
    if finished:
        tail_reasoning, tail_content = parser.finish()
        reasoning, content = reasoning + tail_reasoning, content + tail_content
    if not reasoning and not content:
        return None
    return DeltaMessage(reasoning_content=reasoning or None, content=content or None)


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
