"""vLLM's simple ``POST /generate``: ``{"prompt": ..., "stream": bool, <sampling params>}``.

The answer is ``{"text": [prompt + completion, ...]}``; streamed, one such JSON object per
update, each followed by a NUL byte, as vLLM's demo server sends them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.entrypoints.openai.errors import OpenAIError, from_value_error
from pagedllm.entrypoints.openai.protocol import random_id
from pagedllm.entrypoints.openai.streams import last_output
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

_PARAM_NAMES = {f.name for f in dataclasses.fields(SamplingParams)} - {"all_stop_token_ids"}


class GenerateHandler:
    def __init__(self, engine: AsyncLLM) -> None:
        self.engine = engine

    async def create(self, body: dict[str, Any]) -> JSONResponse | StreamingResponse:
        body = dict(body)
        prompt = body.pop("prompt", None)
        if not isinstance(prompt, str):
            raise OpenAIError("'prompt' (a string) is required.", 400, "prompt")
        stream = bool(body.pop("stream", False))
        unknown = set(body) - _PARAM_NAMES
        if unknown:
            name = sorted(unknown)[0]
            raise OpenAIError(f"Unrecognized request argument supplied: {name}", 400, name)
        kind = RequestOutputKind.CUMULATIVE if stream else RequestOutputKind.FINAL_ONLY
        try:
            params = SamplingParams(**body, output_kind=kind)
            outputs = self.engine.generate(prompt, params, random_id("generate"))
        except (TypeError, ValueError) as exc:
            raise from_value_error(ValueError(str(exc))) from exc
        if stream:
            return StreamingResponse(self._stream(prompt, outputs), media_type="text/plain")
        final = await last_output(outputs)
        return JSONResponse({"text": [prompt + c.text for c in final.outputs]})

    @staticmethod
    async def _stream(prompt: str, outputs: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        async for output in outputs:
            yield (json.dumps({"text": [prompt + c.text for c in output.outputs]}) + "\0").encode()
