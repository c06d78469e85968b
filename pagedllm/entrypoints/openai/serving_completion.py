"""``POST /v1/completions``: one engine request per prompt (text or token ids), ``n`` choices
each; choice ``i`` of prompt ``p`` has index ``p * n + i``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.entrypoints.openai import sse
from pagedllm.entrypoints.openai.chat_renderer import encode_off_loop
from pagedllm.entrypoints.openai.errors import OpenAIError, from_value_error, sse_error
from pagedllm.entrypoints.openai.logprobs_format import completion_logprobs, prompt_logprobs_json
from pagedllm.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    request_ids,
)
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.streams import (
    last_output,
    merge_streams,
    streamed_response,
)
from pagedllm.entrypoints.openai.usage import (
    add_usage,
    beam_usage,
    clamp_max_tokens,
    usage_of,
)
from pagedllm.inputs.prompts import truncate_prompt
from pagedllm.outputs import RequestOutput

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions

# A non-streamed completion writes its prompt's logprobs into every choice (the echoed
# tokens' ``logprobs`` and the ``prompt_logprobs`` field, as vLLM), all built, dumped and
# encoded on the event loop at once: n=32 choices of a 2,000-token prompt at logprobs=20
# made a 177 MB reply, held every other request's loop 10 s and took 2.1 GB of the API
# server (n=128 of a full context, ~30 GB). Past this many entries over all choices a
# response of several choices is refused; one choice is served as ever.
MAX_PROMPT_LOGPROB_ENTRIES = 1 << 19


class CompletionHandler:
    def __init__(
        self,
        engine: AsyncLLM,
        models: ServedModels,
        generation_defaults: dict[str, Any],
        force_include_usage: bool = False,  # --enable-force-include-usage
        prompt_tokens_details: bool = False,  # --enable-prompt-tokens-details
        tokens_as_ids: bool = False,  # --return-tokens-as-token-ids
    ) -> None:
        self.engine = engine
        self.models = models
        self.defaults = generation_defaults
        self.force_include_usage = force_include_usage
        self.details = prompt_tokens_details
        self.tokens_as_ids = tokens_as_ids

    async def create(self, request: CompletionRequest) -> JSONResponse | StreamingResponse:
        model = self.models.resolve(request.model)
        if request.suffix is not None:
            raise OpenAIError("suffix is not supported by pagedllm.", 400, "suffix")
        request_id, engine_id = request_ids(request.request_id, "cmpl")
        stream = bool(request.stream)
        max_tokens = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
        try:
            texts = request.prompts()
            self.engine.check_sequences(len(texts), max(request.n or 1, request.best_of or 0))
            prompts = [await self._prompt(p, request) for p in texts]
            limits = [
                clamp_max_tokens(
                    max_tokens, len(prompt["prompt_token_ids"]), self.models.max_model_len
                )
                for prompt in prompts
            ]
            if not stream:
                _check_prompt_logprob_entries(request, prompts)
            if request.use_beam_search:
                return JSONResponse(
                    await self._beam_search(request, request_id, engine_id, model, prompts, limits)
                )
            prepared = [
                await self.engine.prepare(
                    prompt, self._params(request, limit, stream), f"{engine_id}-{i}",
                    priority=request.priority,
                )
                for i, (prompt, limit) in enumerate(zip(prompts, limits))
            ]  # fmt: skip
            generators = [self.engine.generate_prepared(p) for p in prepared]
        except ValueError as exc:
            raise from_value_error(exc) from exc
        n = request.n or 1
        if stream:
            chunks = self._stream(request, request_id, model, generators, n)
            return streamed_response(chunks)
        finals = await asyncio.gather(*(last_output(g) for g in generators))
        choices = [
            self._choice(request, final, c, p * n + c.index)
            for p, final in enumerate(finals)
            for c in final.outputs
        ]
        usage = add_usage([usage_of(f, f.outputs, details=self.details) for f in finals])
        response = CompletionResponse(id=request_id, model=model, choices=choices, usage=usage)
        return JSONResponse(response.model_dump())

    def _params(self, request: CompletionRequest, max_tokens: int | None, stream: bool) -> Any:
        params = request.sampling_params(max_tokens, request.logprobs, stream, self.defaults)
        if request.echo and request.logprobs is not None and params.prompt_logprobs is None:
            params.prompt_logprobs = request.logprobs  # echoed prompt tokens carry logprobs too
        return params

    def _choice(
        self, request: CompletionRequest, final: RequestOutput, c: Any, index: int
    ) -> CompletionChoice:
        echo = self._echo(request, final)
        logprobs = None
        if request.logprobs is not None:
            ids, positions = list(c.token_ids), list(c.logprobs or [])
            if request.echo:
                ids = (final.prompt_token_ids or []) + ids
                positions = list(final.prompt_logprobs or []) + positions
            as_ids = request.tokens_as_ids(self.tokens_as_ids)
            logprobs = completion_logprobs(
                ids, positions, request.logprobs, self._decode, as_ids=as_ids
            )
        return CompletionChoice(
            index=index,
            text=echo + c.text,
            logprobs=logprobs,
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
            prompt_logprobs=prompt_logprobs_json(final.prompt_logprobs),
            prompt_token_ids=final.prompt_token_ids if request.return_token_ids else None,
            token_ids=list(c.token_ids) if request.return_token_ids else None,
        )

    def _decode(self, token_id: int) -> str:
        tokenizer = self.engine.tokenizer
        return tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"

    async def _beam_search(
        self,
        request: CompletionRequest,
        request_id: str,
        engine_id: str,
        model: str,
        prompts: list[dict[str, Any]],
        limits: list[int | None],
    ) -> dict[str, Any]:
        stream = bool(request.stream)
        searches = [
            self.engine.beam_search(
                prompt, f"{engine_id}-{i}", request.beam_search_params(limit, stream)
            )
            for i, (prompt, limit) in enumerate(zip(prompts, limits))
        ]
        results = await asyncio.gather(*searches)
        n = request.n or 1
        choices = [
            CompletionChoice(
                index=p * n + i, text=beam.text or "", finish_reason=beam.finish_reason
            )
            for p, result in enumerate(results)
            for i, beam in enumerate(result.sequences)
        ]
        usage = add_usage(
            [beam_usage(len(p["prompt_token_ids"]), r) for p, r in zip(prompts, results)]
        )
        return CompletionResponse(
            id=request_id, model=model, choices=choices, usage=usage
        ).model_dump()

    async def _prompt(self, prompt: str | list[int], request: CompletionRequest) -> dict[str, Any]:
        item: dict[str, Any]
        if isinstance(prompt, str):
            tokenizer = self.engine.tokenizer
            if tokenizer is None:
                raise ValueError("This server has no tokenizer: send the prompt as token ids.")
            ids, cut = await encode_off_loop(
                tokenizer, prompt, request.add_special_tokens, self.engine.text_bounds,
                keep_tail=request.truncate_prompt_tokens is not None,
            )  # fmt: skip
            # Text cut to its tail no longer matches the ids: they alone go on.
            item = {"prompt_token_ids": ids} if cut else {"prompt": prompt, "prompt_token_ids": ids}
        else:
            item = {"prompt_token_ids": list(prompt)}
        kept = truncate_prompt(
            item["prompt_token_ids"], request.truncate_prompt_tokens, self.models.max_model_len
        )
        if len(kept) < len(item["prompt_token_ids"]):  # the text no longer matches the ids
            item = {"prompt_token_ids": kept}
        if request.salt() is not None:
            item["cache_salt"] = request.salt()
        return item

    def _echo(self, request: CompletionRequest, output: RequestOutput) -> str:
        if not request.echo:
            return ""
        if output.prompt is not None:
            return output.prompt
        tokenizer = self.engine.tokenizer
        return tokenizer.decode(output.prompt_token_ids or []) if tokenizer else ""

    async def _stream(
        self,
        request: CompletionRequest,
        request_id: str,
        model: str,
        generators: list[AsyncGenerator[RequestOutput, None]],
        n: int,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        include_usage = self.force_include_usage or bool(
            request.stream_options and request.stream_options.include_usage
        )
        # As vLLM: with include_usage, every chunk also carries its prompt's usage so far.
        continuous = bool(request.stream_options and request.stream_options.continuous_usage_stats)
        echoed: set[int] = set()
        prompt_logprobs: dict[int, Any] = {}  # per prompt, from the output that carried them
        ids_sent: set[int] = set()  # choices whose prompt_token_ids went out
        offsets: dict[int, int] = {}  # text_offset of each choice's next token
        tokens = [0] * len(generators)
        lasts: list[RequestOutput | None] = [None] * len(generators)

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            # The shape of CompletionStreamResponse, built as a dict (one per token).
            return sse.event({
                "id": request_id, "object": "text_completion", "created": created,
                "model": model, "choices": choices,
                "usage": usage.model_dump() if include_usage and usage is not None else None,
            })  # fmt: skip

        as_ids = request.tokens_as_ids(self.tokens_as_ids)
        try:
            async for p, output in merge_streams(generators):
                lasts[p] = output
                if output.prompt_logprobs:
                    prompt_logprobs[p] = output.prompt_logprobs
                for c in output.outputs:
                    index = p * n + c.index
                    tokens[p] += len(c.token_ids)
                    text = c.text
                    first = index not in echoed
                    if first:
                        echoed.add(index)
                        text = self._echo(request, output) + text
                    logprobs = None
                    if request.logprobs is not None:
                        ids, positions = list(c.token_ids), list(c.logprobs or [])
                        if first and request.echo:  # the prompt's with it (as vLLM)
                            echo_ids = list(output.prompt_token_ids or [])
                            known = prompt_logprobs.get(p) or [None] * len(echo_ids)
                            ids, positions = echo_ids + ids, list(known) + positions
                        logprobs = completion_logprobs(
                            ids,
                            positions,
                            request.logprobs,
                            self._decode,
                            offsets.get(index, 0),
                            as_ids,
                        )
                        offsets[index] = offsets.get(index, 0) + len(text)
                    if not text and not c.finished() and not c.token_ids:
                        continue
                    choice = {
                        "index": index, "text": text, "logprobs": logprobs,
                        "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
                        "prompt_logprobs": None,
                    }  # fmt: skip
                    if request.return_token_ids:  # as vLLM: prompt ids on a choice's first
                        choice["token_ids"] = list(c.token_ids)
                        if index not in ids_sent:
                            ids_sent.add(index)
                            choice["prompt_token_ids"] = list(output.prompt_token_ids or [])
                    usage = usage_of(output, None, tokens[p], self.details) if continuous else None
                    yield chunk([choice], usage)
            if include_usage:
                parts = [
                    usage_of(o, None, t, self.details)
                    for o, t in zip(lasts, tokens)
                    if o is not None
                ]
                yield chunk([], add_usage(parts))
        except Exception as exc:
            yield sse_error(exc)
        yield sse.DONE


def _check_prompt_logprob_entries(
    request: CompletionRequest, prompts: list[dict[str, Any]]
) -> None:
    """A 400 when a non-streamed response of several choices would repeat more than
    ``MAX_PROMPT_LOGPROB_ENTRIES`` prompt logprobs (each position's top tokens and its own)."""
    if request.use_beam_search:
        return  # beams carry no logprobs
    per_position = 0
    if request.echo and request.logprobs is not None:
        per_position += request.logprobs + 1  # the echoed tokens' logprobs
        if request.prompt_logprobs is None:  # echo asks the engine for them (``_params``)
            per_position += request.logprobs + 1
    if request.prompt_logprobs is not None:
        per_position += max(request.prompt_logprobs, 0) + 1
    n = request.n or 1
    if per_position == 0 or n * len(prompts) == 1:
        return
    positions = sum(len(prompt["prompt_token_ids"]) for prompt in prompts)
    entries = positions * n * per_position
    if entries > MAX_PROMPT_LOGPROB_ENTRIES:
        raise OpenAIError(
            f"This completion would repeat its prompt's logprobs in each of its {n * len(prompts)} "
            f"choices: {entries} entries ({positions} prompt tokens x n={n} x {per_position} "
            f"per token), more than the {MAX_PROMPT_LOGPROB_ENTRIES} this server builds into "
            "one response. Ask for fewer choices or logprobs, or stream the response.",
            400,
        )
