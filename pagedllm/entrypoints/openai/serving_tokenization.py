"""``POST /tokenize`` and ``POST /detokenize``."""

from __future__ import annotations

import asyncio
from typing import Any

from pagedllm.entrypoints.openai.chat_renderer import ChatRenderer
from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.tool_choice import plan_tool_choice


class TokenizationHandler:
    def __init__(self, renderer: ChatRenderer, models: ServedModels) -> None:
        self.renderer = renderer
        self.models = models

    def _require_renderer(self) -> ChatRenderer:
        if self.renderer.tokenizer is None:
            raise OpenAIError("This server was started without a tokenizer.", 400)
        return self.renderer

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self.models.resolve(request.model)
        renderer = self._require_renderer()
        if request.messages is not None:
            # The tools as chat checks them (a 400 for one chat refuses), so the template
            # sees what it would see from /v1/chat/completions.
            tools = plan_tool_choice(request.tools, "none", None, None).tools or None
            text = await renderer.render(
                [m.model_dump(exclude_none=True) for m in request.messages],
                request.chat_template,
                request.add_generation_prompt,
                request.continue_final_message,
                tools,
                request.chat_template_kwargs,
            )
            special = False if request.add_special_tokens is None else request.add_special_tokens
        else:
            text = request.prompt or ""
            special = True if request.add_special_tokens is None else request.add_special_tokens
        tokens = await renderer.encode(text, special)
        strs = None
        if request.return_token_strs:
            # On a worker thread: a long prompt's strings held the event loop for seconds.
            strs = await asyncio.to_thread(renderer.tokenizer.convert_ids_to_tokens, tokens)
        return TokenizeResponse(
            count=len(tokens),
            max_model_len=self.models.max_model_len,
            tokens=tokens,
            token_strs=strs,
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.models.resolve(request.model)
        tokenizer = self._require_renderer().tokenizer
        limit = max(MAX_DETOKENIZE_IDS, self.models.max_model_len)
        if len(request.tokens) > limit:
            raise OpenAIError(
                f"{len(request.tokens)} token ids; this server decodes at most {limit} at once.",
                400,
                "tokens",
            )
        # Checked and decoded on a worker thread: millions of ids held the event loop.
        return DetokenizeResponse(
            prompt=await asyncio.to_thread(_decode, tokenizer, request.tokens)
        )


# The most ids one /detokenize decodes (or max_model_len, if larger): 20 million ids (a 40
# MB body) decoded to 200 MB of text and 5 GB of the API server; a million ids of an
# 81-character token, 7 MB in, made an 82 MB reply (eight at once held the others 12 s).
MAX_DETOKENIZE_IDS = 1 << 17


def _decode(tokenizer: Any, ids: list[int]) -> str:
    vocab = len(tokenizer)
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise OpenAIError(
            f"Token ids {bad[:5]} are out of vocabulary (size {vocab}).", 400, "tokens"
        )
    return tokenizer.decode(ids)
