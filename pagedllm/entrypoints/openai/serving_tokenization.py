"""``POST /tokenize`` and ``POST /detokenize``."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.inputs.chat import apply_chat_template


class TokenizationHandler:
    def __init__(self, tokenizer: Any, models: ServedModels, chat_template: str | None) -> None:
        self.tokenizer = tokenizer
        self.models = models
        self.chat_template = chat_template

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise OpenAIError("This server was started without a tokenizer.", 400)
        return self.tokenizer

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self.models.resolve(request.model)
        tokenizer = self._require_tokenizer()
        if request.messages is not None:
            text = apply_chat_template(
                tokenizer,
                [m.model_dump(exclude_none=True) for m in request.messages],
                chat_template=request.chat_template or self.chat_template,
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
                tools=request.tools,
                chat_template_kwargs=request.chat_template_kwargs,
            )
            special = False if request.add_special_tokens is None else request.add_special_tokens
        else:
            text = request.prompt or ""
            special = True if request.add_special_tokens is None else request.add_special_tokens
        tokens = tokenizer.encode(text, add_special_tokens=special)
        strs = tokenizer.convert_ids_to_tokens(tokens) if request.return_token_strs else None
        return TokenizeResponse(
            count=len(tokens),
            max_model_len=self.models.max_model_len,
            tokens=tokens,
            token_strs=strs,
        )

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.models.resolve(request.model)
        tokenizer = self._require_tokenizer()
        vocab = len(tokenizer)
        bad = [t for t in request.tokens if not 0 <= t < vocab]
        if bad:
            raise OpenAIError(
                f"Token ids {bad[:5]} are out of vocabulary (size {vocab}).", 400, "tokens"
            )
        return DetokenizeResponse(prompt=tokenizer.decode(request.tokens))
