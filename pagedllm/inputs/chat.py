"""Chat templates: messages in, one prompt string out.

A render is two steps. ``prepare_chat`` checks the messages and arguments and gathers
everything the template will see into a ``ChatRender`` of plain JSON data; ``render_chat``
renders it with transformers' sandboxed Jinja environment (``render_jinja_template``, the
code behind ``tokenizer.apply_chat_template``). The server renders in a separate process
bounded in time and memory (``template_sandbox.py``); the offline ``LLM`` and
``pagedllm chat`` render in process (``render_chat(prepare_chat(...))``), since their caller
wrote the template or chose the model.

A template is always text here. Only an operator names a template file (``--chat-template``,
read once by ``load_chat_template``); a request's template is never a path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pagedllm import json_nesting

_ROLES = ("system", "user", "assistant", "tool", "developer")
# chat_template_kwargs keys that stand for an argument of their own: the kwarg wins, as
# vLLM merges them.
_ARGUMENT_KEYS = ("add_generation_prompt", "continue_final_message", "tools", "documents")
# Keys the renderer sets itself: a template variable of that name cannot be given.
_RESERVED_KEYS = ("messages", "conversations", "return_assistant_tokens_mask")


@dataclass(frozen=True)
class ChatRender:
    """One render's inputs, plain JSON data (so it can cross a process boundary)."""

    template: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    documents: list[dict[str, Any]] | None
    add_generation_prompt: bool
    continue_final_message: bool
    variables: dict[str, Any]  # the tokenizer's special tokens, then chat_template_kwargs

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ChatRender:
        return cls(**json.loads(text))


def load_chat_template(template: str | None) -> str | None:
    """An operator's ``--chat-template``: the template text, or a file holding it."""
    if template is None:
        return None
    if "{" not in template and "\n" not in template:
        path = Path(template).expanduser()
        if path.is_file():
            return path.read_text()
        raise ValueError(f"Chat template file {template!r} does not exist.")
    return template


def template_from_kwargs(chat_template_kwargs: dict[str, Any] | None) -> str | None:
    """A template given inside ``chat_template_kwargs`` (vLLM lets it override the field)."""
    value = (chat_template_kwargs or {}).get("chat_template")
    if value is not None and not isinstance(value, str):
        raise ValueError("chat_template_kwargs.chat_template must be a string.")
    return value


def prepare_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> ChatRender:
    """Check the inputs of a render and gather them (ValueError naming what is wrong)."""
    if tokenizer is None:
        raise ValueError("Chat needs a tokenizer; the engine was started with skip_tokenizer_init.")
    kwargs = dict(chat_template_kwargs or {})
    reserved = sorted(k for k in kwargs if k in _RESERVED_KEYS)
    if reserved:
        raise ValueError(
            f"chat_template_kwargs cannot set {', '.join(reserved)}: the server fills "
            f"{'it' if len(reserved) == 1 else 'them'} in."
        )
    chat_template = template_from_kwargs(kwargs) or chat_template
    kwargs.pop("chat_template", None)
    add_generation_prompt = _flag(kwargs, "add_generation_prompt", add_generation_prompt)
    continue_final_message = _flag(kwargs, "continue_final_message", continue_final_message)
    tools = _json_list(kwargs, "tools", tools)
    documents = _json_list(kwargs, "documents", None)
    if add_generation_prompt and continue_final_message:
        raise ValueError(
            "continue_final_message and add_generation_prompt are not compatible: use "
            "continue_final_message to have the model complete the final message, and "
            "add_generation_prompt to have it start a new assistant message."
        )
    return ChatRender(
        template=_resolve_template(tokenizer, chat_template, tools),
        messages=normalize_messages(messages),
        tools=tools,
        documents=documents,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        variables={**tokenizer.special_tokens_map, **kwargs},
    )


def render_chat(job: ChatRender) -> str:
    """Render with transformers' sandboxed environment. A template that fails on these
    messages is the caller's input at fault: ValueError (HTTP 400)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[job.messages],
            tools=job.tools,
            documents=job.documents,
            chat_template=job.template,
            continue_final_message=job.continue_final_message,
            add_generation_prompt=job.add_generation_prompt,
            **job.variables,
        )
    except MemoryError:
        raise
    except Exception as exc:  # a template is code: anything it raises is its own failure
        raise ValueError(
            f"The chat template could not render these messages: {type(exc).__name__}: {exc}"
        ) from None
    return rendered[0]


def _resolve_template(tokenizer: Any, chat_template: str | None, tools: Any) -> str:
    """The given template text (or the name of one of the tokenizer's), else the
    tokenizer's own, as transformers picks it."""
    try:
        template = tokenizer.get_chat_template(chat_template, tools)
    except ValueError:
        template = None
    if not template:
        raise ValueError(
            "The tokenizer has no chat template, so a chat template must be given "
            "(chat_template=... or --chat-template)."
        )
    return template


def _flag(kwargs: dict[str, Any], name: str, default: bool) -> bool:
    value = kwargs.pop(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"chat_template_kwargs.{name} must be true or false.")
    return value


def _json_list(kwargs: dict[str, Any], name: str, default: Any) -> Any:
    value = kwargs.pop(name, default)
    if value is not None and not (
        isinstance(value, list) and all(isinstance(v, dict) for v in value)
    ):
        raise ValueError(f"{name} must be a list of objects.")
    return value


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
        # Keys set to None are dropped, as transformers does: templates test for a key's
        # presence and would render a literal "None".
        item = {k: v for k, v in message.items() if v is not None}
        item["content"] = _content_text(message.get("content"), i)
        if item.get("tool_calls"):
            if not isinstance(item["tool_calls"], list):
                raise ValueError(f"messages[{i}].tool_calls must be a list of tool calls.")
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
    try:  # nesting bounded: the templates' tojson, and json.dumps, recurse per level
        arguments = json_nesting.loads(
            function["arguments"], f"messages[{index}].tool_calls' arguments"
        )
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
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError(
                    f"messages[{index}] has a text part whose 'text' is "
                    f"{'missing' if text is None else type(text).__name__}; it must be a string."
                )
            texts.append(text)
        return "\n".join(texts)
    raise ValueError(f"messages[{index}].content must be a string or a list of text parts.")
