"""Messages to prompt token ids for the server: the chat template rendered in the
sandbox (``inputs/template_sandbox.py``), the text tokenized on a worker thread, so the
event loop only waits.

A request may bring its own template (``chat_template``, or ``chat_template`` inside
``chat_template_kwargs``) only when the server runs with ``--trust-request-chat-template``
(vLLM's flag and default): a template is a program, and it is never a path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pagedllm.inputs.chat import prepare_chat, template_from_kwargs
from pagedllm.inputs.template_sandbox import RenderLimits, TemplateSandbox
from pagedllm.inputs.tokenizer import bounded_text, prompt_char_limit


def render_limits(tokenizer: Any, max_model_len: int, timeout_s: float) -> RenderLimits:
    """The chat template's bounds: its time, and its output at most ``prompt_char_limit``
    (a 40-byte request template rendered 48 MB, whose tokenization took 5 GB), never past
    the sandbox's own cap."""
    cap = RenderLimits().max_chars
    if tokenizer is None:
        return RenderLimits(timeout_s=timeout_s)
    return RenderLimits(
        timeout_s=timeout_s, max_chars=min(cap, prompt_char_limit(tokenizer, max_model_len))
    )


class ChatRenderer:
    def __init__(
        self,
        tokenizer: Any,
        default_template: str | None,
        sandbox: TemplateSandbox,
        trust_request_template: bool,
        default_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.default_template = default_template
        self.sandbox = sandbox
        self.trust_request_template = trust_request_template
        # --default-chat-template-kwargs: under every request's own, for chat and /tokenize
        # alike, so a prompt's count there is the count chat runs.
        self.default_template_kwargs = default_template_kwargs or {}

    async def render(
        self,
        messages: list[dict[str, Any]],
        request_template: str | None,
        add_generation_prompt: bool,
        continue_final_message: bool,
        tools: list[dict[str, Any]] | None,
        chat_template_kwargs: dict[str, Any] | None,
    ) -> str:
        """The prompt text (ValueError, a 400, naming what is wrong)."""
        given = request_template is not None or template_from_kwargs(chat_template_kwargs)
        if given and not self.trust_request_template:
            raise ValueError(
                "chat_template in a request is refused: this server does not run request "
                "templates (start it with --trust-request-chat-template to allow them)."
            )
        if self.default_template_kwargs:
            chat_template_kwargs = {**self.default_template_kwargs, **(chat_template_kwargs or {})}
        job = prepare_chat(
            self.tokenizer,
            messages,
            chat_template=request_template or self.default_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            chat_template_kwargs=chat_template_kwargs,
        )
        return await self.sandbox.render(job)

    async def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return await encode_off_loop(
            self.tokenizer, text, add_special_tokens, self.sandbox.limits.max_chars
        )


async def encode_off_loop(
    tokenizer: Any, text: str, add_special_tokens: bool, max_chars: int, keep_tail: bool = False
) -> list[int]:
    """Tokenize on a worker thread (the tokenizers library releases the GIL meanwhile), the
    text bounded first (``tokenizer.bounded_text``)."""
    text = bounded_text(text, max_chars, keep_tail)
    return await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=add_special_tokens)
