"""vLLM's simple ``POST /generate``: ``{"prompt": ..., "stream": bool, <sampling params>}``.

The body is typed like every other endpoint's (``GenerateRequest``). The answer is
``{"text": [prompt + completion, ...]}``; streamed, one such JSON object per update, each
followed by a NUL byte, as vLLM's demo server sends them.

Each streamed object holds a sample's prompt and its whole completion so far (one object per
sample's update, as vLLM sends them), so a stream's bytes grew with n x prompt x tokens, and
with the square of the completion: a 64 KB prompt of n=32 and 100 tokens streamed 205 MB.
Past ``STREAM_BYTES_FLOOR`` bytes a sample's object is sent only once it is twice the size of
that sample's last one sent, or ends the sample: each holds all of the sample before it, so
nothing is lost, and the rest of the stream is about three times the samples' final objects.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.entrypoints.openai.errors import from_value_error, sse_error
from pagedllm.entrypoints.openai.protocol import GenerateRequest, random_id
from pagedllm.entrypoints.openai.streams import last_output, streamed_response
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

# The bytes a streamed /generate sends object by object before it sends only objects twice
# the size of the last one sent: more than a 2,048-token completion of one sample needs.
STREAM_BYTES_FLOOR = 16 << 20


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
            return streamed_response(self._stream(request.prompt, outputs), "text/plain")
        final = await last_output(outputs)
        return JSONResponse({"text": [request.prompt + c.text for c in final.outputs]})

    @staticmethod
    async def _stream(prompt: str, outputs: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        sender = _CumulativeSender()
        try:
            async for output in outputs:
                # Sized before it is built: a skipped object costs no copy of the prompt.
                sizes = {c.index: len(prompt) + len(c.text) for c in output.outputs}
                ends = output.finished or any(c.finished() for c in output.outputs)
                if not sender.sends(sizes, ends):
                    continue
                text = [prompt + c.text for c in output.outputs]
                chunk = (json.dumps({"text": text}) + "\0").encode()
                sender.sent += len(chunk)
                yield chunk
        except Exception as exc:
            # The stream has started: its last object says why it ended.
            yield (sse_error(exc).removeprefix("data: ").rstrip("\n") + "\0").encode()


class _CumulativeSender:
    """Which objects of a stream are sent, where each object holds all earlier ones of the
    samples it names: every one up to ``STREAM_BYTES_FLOOR`` bytes; past them, one that ends
    a sample (or the stream), or in which a sample's text is at least twice as long as in
    that sample's last object sent."""

    def __init__(self) -> None:
        self.sent = 0  # bytes, added by the caller once an object is sent
        self.last: dict[int, int] = {}  # characters of each sample's last object sent

    def sends(self, sizes: dict[int, int], ends: bool) -> bool:
        """Whether the object with these characters of text per sample index is sent (and
        noted if it is)."""
        grown = any(size >= 2 * self.last.get(i, 0) for i, size in sizes.items())
        if not (ends or grown or self.sent + sum(sizes.values()) <= STREAM_BYTES_FLOOR):
            return False
        self.last.update(sizes)
        return True
