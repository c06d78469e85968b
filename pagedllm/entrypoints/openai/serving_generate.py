"""vLLM's simple ``POST /generate``: ``{"prompt": ..., "stream": bool, <sampling params>}``.

The body is typed like every other endpoint's (``GenerateRequest``). The answer is
``{"text": [prompt + completion, ...]}``; streamed, one such JSON object per update, each
followed by a NUL byte, as vLLM's demo server sends them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.entrypoints.openai.errors import from_value_error, sse_error
from pagedllm.entrypoints.openai.protocol import GenerateRequest, random_id
from pagedllm.entrypoints.openai.streams import last_output, released_on_hang_up
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


class GenerateHandler:
    def __init__(self, engine: AsyncLLM) -> None:
        self.engine = engine

    async def create(self, request: GenerateRequest) -> JSONResponse | StreamingResponse:
        kind = RequestOutputKind.CUMULATIVE if request.stream else RequestOutputKind.FINAL_ONLY
        try:
            params = SamplingParams(**request.sampling_kwargs(), output_kind=kind)
            # Text prompts are tokenized inside prepare, on a worker thread.
            prepared = await self.engine.prepare(request.prompt, params, random_id("generate"))
            outputs = self.engine.generate_prepared(prepared)
        except ValueError as exc:
            raise from_value_error(exc) from exc
        if request.stream:
            return StreamingResponse(
                released_on_hang_up(self._stream(request.prompt, outputs)), media_type="text/plain"
            )
        final = await last_output(outputs)
        return JSONResponse({"text": [request.prompt + c.text for c in final.outputs]})

    @staticmethod
    async def _stream(prompt: str, outputs: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        try:
            async for output in outputs:
                text = [prompt + c.text for c in output.outputs]
                yield (json.dumps({"text": text}) + "\0").encode()
        except Exception as exc:
            # The stream has started: its last object says why it ended.
            yield (sse_error(exc).removeprefix("data: ").rstrip("\n") + "\0").encode()
