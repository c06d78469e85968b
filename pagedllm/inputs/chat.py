"""Chat templates: messages in, one prompt string out (rendered by the tokenizer's Jinja
template, or one the caller passes as a string or a file path)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

_ROLES = ("system", "user", "assistant", "tool", "developer")


def load_chat_template(template: str | None) -> str | None:
    """A template given inline, or the contents of the file it names."""
    if template is None:
        return None
    if "{" not in template and "\n" not in template:
        path = Path(template).expanduser()
        if path.is_file():
            return path.read_text()
        raise ValueError(f"Chat template file {template!r} does not exist.")
    return template


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles; flatten OpenAI-style content parts ([{"type": "text", ...}]) into text."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}.")
    normalized = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"messages[{i}] must be a dict with a 'role'.")
        if message["role"] not in _ROLES:
            raise ValueError(
                f"messages[{i}] has unknown role {message['role']!r}; use one of {_ROLES}."
            )
        item = dict(message)
        item["content"] = _content_text(item.get("content"), i)
        if item.get("tool_calls"):
            item["tool_calls"] = [_decoded_call(call, i) for call in item["tool_calls"]]
        normalized.append(item)
    return normalized


def _decoded_call(call: Any, index: int) -> Any:
    """An assistant's earlier tool call with its arguments as a dict: OpenAI sends them as
    JSON text, and chat templates (Qwen2.5, Hermes) render them with ``tojson``."""
    if not isinstance(call, dict):
        raise ValueError(f"messages[{index}].tool_calls entries must be objects.")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError:
        raise ValueError(
            f"messages[{index}].tool_calls: the arguments of {function.get('name')!r} are not "
            "valid JSON."
        ) from None
    return {**call, "function": {**function, "arguments": arguments}}


def _content_text(content: Any, index: int) -> str:
    # An assistant turn that only calls tools has no content; templates that concatenate
    # message['content'] (SmolLM2's among them) need a string there.
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"messages[{index}] has a content part of type {kind!r}; only text parts "
                    "are supported."
                )
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise ValueError(f"messages[{index}].content must be a string or a list of text parts.")


def apply_chat_template(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    if tokenizer is None:
        raise ValueError("Chat needs a tokenizer; the engine was started with skip_tokenizer_init.")
    if add_generation_prompt and continue_final_message:
        raise ValueError(
            "continue_final_message and add_generation_prompt are not compatible: use "
            "continue_final_message to have the model complete the final message, and "
            "add_generation_prompt to have it start a new assistant message."
        )
    template = load_chat_template(chat_template) or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(
            "The tokenizer has no chat template, so a chat template must be given "
            "(chat_template=... or --chat-template)."
        )
    kwargs = dict(chat_template_kwargs or {})
    for reserved in ("tokenize", "conversation", "messages"):
        kwargs.pop(reserved, None)
    try:
        return tokenizer.apply_chat_template(
            normalize_messages(messages),
            chat_template=template,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **kwargs,
        )
    except jinja2.TemplateError as e:
        # The messages do not fit the template (a role or field it cannot render): the
        # caller's input is at fault, so it is a ValueError (HTTP 400), not a crash.
        raise ValueError(f"The chat template could not render these messages: {e}") from None
