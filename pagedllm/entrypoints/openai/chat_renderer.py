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
from pagedllm.inputs.template_sandbox import TemplateSandbox
from pagedllm.inputs.tokenizer import Encoded, TextBounds, encode_bounded

# The messages' and tools' text, before rendering, may be at most this many times the
# rendered text's bound: a template adds its markup and drops little (a 63 MB body of
# messages cost ~1 s of the server's CPU to render before its 400). A template that drops
# more than half of what it is given (the reasoning of earlier turns, say) is refused here
# only once that text is past twice the bound, millions of characters.
RENDER_INPUT_FACTOR = 2


class ChatRenderer:
    def __init__(
        self,
        tokenizer: Any,
        default_template: str | None,
        sandbox: TemplateSandbox,
        trust_request_template: bool,
        default_template_kwargs: dict[str, Any] | None,
        text_bounds: TextBounds,
    ) -> None:
        self.tokenizer = tokenizer
        # Rendered text past these (``InputProcessor.text_bounds``) is refused, or cut to its
        # tail for truncation, before the tokenizer sees all of it: a 40-byte request
        # template rendered 48 MB, whose tokenization took 5 GB of this process.
        self.text_bounds = text_bounds
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
        keep_tail: bool = False,
    ) -> str:
        """The prompt text (ValueError, a 400, naming what is wrong). ``keep_tail``: the
        prompt will be cut to its last tokens, so any length of messages is rendered."""
        if not keep_tail:
            self._check_input_chars(messages, tools, chat_template_kwargs)
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

    def _check_input_chars(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        chat_template_kwargs: dict[str, Any] | None,
    ) -> None:
        # The template kwargs (``documents`` among them) reach the template as the messages
        # do: 60 MB of documents went to the sandbox and back as a 200, where as much in the
        # messages is refused here.
        bound = RENDER_INPUT_FACTOR * self.text_bounds.max_chars
        chars = text_chars([messages, tools, chat_template_kwargs], bound)
        if chars > bound:
            raise ValueError(
                "The messages, tools and chat_template_kwargs (documents included) hold more "
                f"than {bound} characters of text, more than "
                f"the {self.text_bounds.max_tokens}-token context can hold; shorten them, or "
                "set truncate_prompt_tokens to keep their last tokens."
            )

    async def encode(
        self, text: str, add_special_tokens: bool, keep_tail: bool = False
    ) -> list[int]:
        """``keep_tail``: the prompt is truncated to its last tokens (``encode_off_loop``)."""
        encoded = await encode_off_loop(
            self.tokenizer, text, add_special_tokens, self.text_bounds, keep_tail
        )
        return encoded.ids


async def encode_off_loop(
    tokenizer: Any,
    text: str,
    add_special_tokens: bool,
    bounds: TextBounds,
    keep_tail: bool = False,
) -> Encoded:
    """Tokenize on a worker thread (the tokenizers library releases the GIL meanwhile), the
    text bounded first (``tokenizer.encode_bounded``)."""
    return await asyncio.to_thread(
        encode_bounded, tokenizer, text, add_special_tokens, bounds, keep_tail
    )


def text_chars(value: Any, stop_past: int) -> int:
    """Characters in the strings inside ``value`` (JSON-like: dicts, lists, strings), keys
    included; counting stops once past ``stop_past``."""
    total = 0
    stack = [value]
    while stack and total <= stop_past:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total
