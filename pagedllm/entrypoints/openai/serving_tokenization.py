"""``POST /tokenize`` and ``POST /detokenize``."""

from __future__ import annotations

import asyncio

from pagedllm.entrypoints.openai.chat_renderer import ChatRenderer
from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.serving_models import ServedModels


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
            text = await renderer.render(
                [m.model_dump(exclude_none=True) for m in request.messages],
                request.chat_template,
                request.add_generation_prompt,
                request.continue_final_message,
                request.tools,
                request.chat_template_kwargs,
            )
            special = False if request.add_special_tokens is None else request.add_special_tokens
        else:
            text = request.prompt or ""
            special = True if request.add_special_tokens is None else request.add_special_tokens
        tokens = await renderer.encode(text, special)
        strs = None
        if request.return_token_strs:
            strs = renderer.tokenizer.convert_ids_to_tokens(tokens)
        return TokenizeResponse(
            count=len(tokens),
            max_model_len=self.models.max_model_len,
            tokens=tokens,
            token_strs=strs,
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.models.resolve(request.model)
        tokenizer = self._require_renderer().tokenizer
        vocab = len(tokenizer)
        bad = [t for t in request.tokens if not 0 <= t < vocab]
        if bad:
            raise OpenAIError(
                f"Token ids {bad[:5]} are out of vocabulary (size {vocab}).", 400, "tokens"
            )
        text = await asyncio.to_thread(tokenizer.decode, request.tokens)
        return DetokenizeResponse(prompt=text)
