"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API,
as vLLM 0.26 serves it, translated over the chat path.

A request becomes a ``ChatCompletionRequest`` and runs through ``ChatHandler.create``, so
it shares the chat template, limits, engine path, reasoning and tool-call parsing; the
chat response (or its stream of chunks) is translated back into Anthropic's ``message``
(or its server-sent events). Errors on these paths are Anthropic-shaped (``errors.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pagedllm import json_nesting
from pagedllm.entrypoints.openai.errors import OpenAIError, anthropic_error_body
from pagedllm.entrypoints.openai.messages_protocol import (
    ConversationFields,
    CountTokensRequest,
    CountTokensResponse,
    MessageParam,
    MessagesRequest,
    MessagesResponse,
    TextOut,
    ThinkingOut,
    ToolChoiceParam,
    ToolParam,
    ToolResultBlock,
    ToolUseOut,
)
from pagedllm.entrypoints.openai.middleware import unless_disconnected
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, StreamOptions
from pagedllm.entrypoints.openai.serving_chat import ChatHandler
from pagedllm.entrypoints.openai.streams import streamed_response
from pagedllm.entrypoints.openai.tool_choice import check_unique_names
from pagedllm.entrypoints.openai.unknown_fields import note_inert_field
from pagedllm.logger import init_logger

logger = init_logger(__name__)

# Claude Code opens its system prompt with a block holding a per-request hash; dropped (as
# vLLM does) so that requests share their cached prefix.
_BILLING_HEADER = "x-anthropic-billing-header"
_ENGINE_FAILED = "The engine could not complete this request."
_ENCODER = msgspec.json.Encoder()


def install_messages_routes(app: FastAPI, chat: ChatHandler) -> None:
    """Register ``/v1/messages`` and ``/v1/messages/count_tokens`` over ``chat``."""
    handler = MessagesHandler(chat)

    @app.post("/v1/messages", response_model=MessagesResponse)
    async def create_message(body: MessagesRequest, raw: Request) -> Response:
        return await unless_disconnected(raw, handler.create(body)) or Response(status_code=499)

    @app.post("/v1/messages/count_tokens", response_model=CountTokensResponse)
    async def count_message_tokens(body: CountTokensRequest) -> JSONResponse:
        return JSONResponse(await handler.count_tokens(body))


class MessagesHandler:
    def __init__(self, chat: ChatHandler) -> None:
        self.chat = chat

    async def create(self, request: MessagesRequest) -> Response:
        _accept(request)
        message_id = f"msg_{uuid.uuid4().hex}"
        response = await self.chat.create(to_chat_request(request, message_id))
        if isinstance(response, StreamingResponse):
            chunks = response.body_iterator
            events = _translate_stream(chunks, MessageEvents(message_id))  # type: ignore[arg-type]
            return streamed_response(events)
        return JSONResponse(message_from_chat(json.loads(response.body), message_id))

    async def count_tokens(self, request: CountTokensRequest) -> dict[str, Any]:
        _accept(request)
        ids = await self.chat.prompt_token_ids(to_chat_request(request))
        return CountTokensResponse(input_tokens=len(ids)).model_dump()


def _accept(request: ConversationFields) -> None:
    request.refuse_unbuilt()
    check_unique_names([t.name for t in request.tools or []], "tools.{}.name")
    if request.thinking is not None:
        note_inert_field(
            type(request).__name__, "thinking", "the server's --reasoning-parser decides what "
            "is returned as thinking, and budget_tokens is not enforced",
        )  # fmt: skip


# -- the request -------------------------------------------------------------------------


def to_chat_request(
    request: MessagesRequest | CountTokensRequest, message_id: str | None = None
) -> ChatCompletionRequest:
    """The chat request that runs (or, for count_tokens, renders) an Anthropic request.
    A final assistant message is a prefill the reply continues, as Anthropic defines it."""
    prefill = request.messages[-1].role == "assistant"
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request),
        "tools": _chat_tools(request.tools),
        "tool_choice": _chat_tool_choice(request.tool_choice, bool(request.tools)),
        "parallel_tool_calls": _parallel(request.tool_choice),
        "chat_template_kwargs": request.chat_template_kwargs,
        "add_generation_prompt": not prefill,
        "continue_final_message": prefill,
    }
    if isinstance(request, MessagesRequest):
        fields.update(_sampling_fields(request, message_id))
    return ChatCompletionRequest(**fields)


def _sampling_fields(request: MessagesRequest, message_id: str | None) -> dict[str, Any]:
    # metadata and service_tier have no counterpart here: accepted and dropped.
    fields: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "stop": request.stop_sequences,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "stream": request.stream,
        "request_id": message_id,  # the response's id, and the engine's (with a suffix)
    }
    if request.stream:
        # Usage on every chunk: message_start reports the prompt's tokens.
        fields["stream_options"] = StreamOptions(include_usage=True, continuous_usage_stats=True)
    config = request.output_config
    if config is not None and config.effort is not None:
        fields["reasoning_effort"] = config.effort
    if config is not None and config.format is not None:
        schema = {"name": "output", "schema": config.format.json_schema}
        fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    return fields


def chat_messages(request: ConversationFields) -> list[dict[str, Any]]:
    """The conversation as chat messages: one system message first (the top-level prompt
    and any system-role messages, as vLLM merges them), then each turn."""
    messages: list[dict[str, Any]] = []
    system = _system_text(request)
    if system:
        messages.append({"role": "system", "content": system})
    last = len(request.messages) - 1
    for index, message in enumerate(request.messages):
        if message.role == "user":
            turn = _user_messages(message)
            empty = not turn
            messages += turn
        elif message.role == "assistant":
            chat = _assistant_message(message)
            empty = not (chat["content"] or chat.get("tool_calls") or chat.get("reasoning"))
            messages.append(chat)
        else:
            continue
        if empty and not (message.role == "assistant" and index == last):
            # As Anthropic: only a final assistant message (a prefill) may be empty. It was
            # dropped here, and the request refused as having no messages at all.
            raise ValueError(
                f"messages.{index}.content is empty: every message needs text, a tool use or "
                "a tool result, except a final assistant message."
            )
    return messages


def _system_text(request: ConversationFields) -> str:
    sources = [request.system, *(m.content for m in request.messages if m.role == "system")]
    parts: list[str] = []
    for content in sources:
        if isinstance(content, str):
            parts.append(content)
        elif content is not None:
            parts += [block.text for block in content if block.type == "text"]
    return "".join(p for p in parts if not p.startswith(_BILLING_HEADER))


def _user_messages(message: MessageParam) -> list[dict[str, Any]]:
    """Tool results become tool messages (first: they answer the previous turn's calls),
    then the user's text, if any."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    tools = [_tool_message(b) for b in message.content if isinstance(b, ToolResultBlock)]
    texts = [b.text for b in message.content if b.type == "text" and b.text]
    user = [{"role": "user", "content": _text_content(texts)}] if texts else []
    return tools + user


def _tool_message(block: ToolResultBlock) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": block.content_text()}


def _assistant_message(message: MessageParam) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts, calls, thoughts = [], [], []
    for block in message.content:
        if block.type == "text" and block.text:
            texts.append(block.text)
        elif block.type == "tool_use":
            function = {"name": block.name, "arguments": json.dumps(block.input)}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif block.type == "thinking":
            thoughts.append(block.thinking)
        # redacted_thinking is opaque: accepted (clients echo it back) and left out
    chat: dict[str, Any] = {"role": "assistant", "content": _text_content(texts)}
    if calls:
        chat["tool_calls"] = calls
    if thoughts:
        chat["reasoning"] = "".join(thoughts)  # for templates that render past reasoning
    return chat


def _text_content(texts: list[str]) -> str | list[dict[str, Any]] | None:
    if not texts:
        return None
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": text} for text in texts]


def _chat_tools(tools: list[ToolParam] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    chat_tools = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        chat_tools.append({"type": "function", "function": function})
    return chat_tools


def _chat_tool_choice(
    choice: ToolChoiceParam | None, has_tools: bool
) -> str | dict[str, Any] | None:
    """auto → auto, any → required, tool → the named function, none → none. Without tools,
    auto is the same as no choice (the chat path would refuse auto without tools)."""
    if choice is None or (choice.type == "auto" and not has_tools):
        return None
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _parallel(choice: ToolChoiceParam | None) -> bool | None:
    if choice is None or choice.disable_parallel_tool_use is None:
        return None
    return not choice.disable_parallel_tool_use


# -- the response ------------------------------------------------------------------------


def message_from_chat(body: dict[str, Any], message_id: str) -> dict[str, Any]:
    """A chat completion (one choice) as Anthropic's ``message``."""
    choice = body["choices"][0]
    if choice["finish_reason"] == "error":
        raise OpenAIError(_ENGINE_FAILED, 500)
    message = choice["message"]
    content: list[ThinkingOut | TextOut | ToolUseOut] = []
    if message.get("reasoning"):
        content.append(ThinkingOut(thinking=message["reasoning"], signature=_signature()))
    if message.get("content"):
        content.append(TextOut(text=message["content"]))
    content += [_tool_use(call) for call in message.get("tool_calls") or ()]
    called = any(isinstance(block, ToolUseOut) for block in content)
    reason, sequence = stop_reason(choice["finish_reason"], choice.get("stop_reason"), called)
    usage = body["usage"]
    return MessagesResponse(
        id=message_id,
        model=body["model"],
        content=content or [TextOut(text="")],  # Anthropic's empty reply: one empty text
        stop_reason=reason,
        stop_sequence=sequence,
        usage={"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
    ).model_dump()


def _tool_use(call: dict[str, Any]) -> ToolUseOut | TextOut:
    """A call as a tool_use block; arguments that are not a JSON object (a call cut short
    by max_tokens) stay text, so no client runs a tool on half its input."""
    function = call["function"]
    try:  # the model's text: nesting past the bound stays text too
        arguments = json_nesting.loads(function["arguments"], "the call's arguments")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        return TextOut(text=function["arguments"])
    return ToolUseOut(id=call["id"], name=function["name"], input=arguments)


def stop_reason(
    finish_reason: str | None, matched: str | int | None, called_tools: bool
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) from the chat choice's finish_reason and stop_reason
    (the stop string that matched, when one did)."""
    if finish_reason == "length":
        return "max_tokens", None
    if isinstance(matched, str):
        return "stop_sequence", matched
    if called_tools or finish_reason == "tool_calls":
        return "tool_use", None
    return "end_turn", None


def _signature() -> str:
    # Anthropic signs thinking blocks to check them when sent back; nothing checks them
    # here, but clients that echo thinking expect a signature (vLLM sends a random one).
    return uuid.uuid4().hex


# -- the stream --------------------------------------------------------------------------


def event(body: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event: its name is the body's type."""
    return b"event: " + body["type"].encode() + b"\ndata: " + _ENCODER.encode(body) + b"\n\n"


def error_event(message: str, status: int) -> bytes:
    return event(anthropic_error_body(message, status))


async def _translate_stream(
    chunks: AsyncIterator[bytes | str], events: MessageEvents
) -> AsyncIterator[bytes]:
    """The chat stream's chunks as Anthropic events. Closing this (the client left) closes
    the chat stream, which aborts the engine request."""
    async with aclosing(chunks):  # type: ignore[type-var]
        try:
            async for raw in chunks:
                chunk = _decode(raw)
                if chunk is None:  # the chat stream's [DONE]
                    break
                for item in events.feed(chunk):
                    yield item
                if events.failed:
                    return
            for item in events.finish():
                yield item
        except Exception as exc:  # a bug here: logged, and the stream ends in an error
            logger.error("Messages stream ended by an unexpected error", exc_info=exc)
            yield error_event("Internal server error (see the server log).", 500)


def _decode(raw: bytes | str) -> dict[str, Any] | None:
    data = (raw.encode() if isinstance(raw, str) else raw).strip().removeprefix(b"data: ")
    return None if data == b"[DONE]" else msgspec.json.decode(data)


class MessageEvents:
    """One chat stream's chunks (dicts) → Anthropic's events: message_start and a ping,
    then content blocks (thinking, text, tool_use; each start, deltas, stop), then
    message_delta (stop_reason, usage) and message_stop."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.failed = False  # an error event was sent: nothing may follow it
        self._model = ""
        self._started = False
        self._index = -1  # the newest block's index
        self._open: str | None = None  # the open block's type
        self._call_index: int | None = None  # the open tool_use block's chat call index
        self._held: list[str] = []  # text that came while a tool_use block was open
        self._called = False
        self._finish: str | None = None
        self._matched: str | int | None = None
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if "error" in chunk:  # the chat stream's own error event
            return self._fail(chunk["error"]["message"], chunk["error"]["code"])
        self._model = chunk["model"]
        self._usage = chunk.get("usage") or self._usage
        out = self._start() if self._usage else []  # once the prompt is counted
        if not chunk["choices"]:
            return out
        choice = chunk["choices"][0]
        delta = choice["delta"]
        if delta.get("reasoning"):
            out += self._append("thinking", "thinking_delta", "thinking", delta["reasoning"])
        if delta.get("content"):
            out += self._text(delta["content"])
        for call in delta.get("tool_calls") or ():
            out += self._tool_call(call)
        if choice["finish_reason"] is not None:
            self._finish, self._matched = choice["finish_reason"], choice.get("stop_reason")
        return out

    def finish(self) -> list[bytes]:
        if self._finish == "error":
            return self._fail(_ENGINE_FAILED, 500)
        out = self._start()
        if self._index < 0:  # nothing generated: one empty text block, as non-streamed
            out += self._open_block({"type": "text", "text": ""})
        out += self._close()
        reason, sequence = stop_reason(self._finish, self._matched, self._called)
        usage = {
            "input_tokens": self._usage.get("prompt_tokens", 0),
            "output_tokens": self._usage.get("completion_tokens", 0),
        }
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(event({"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(event({"type": "message_stop"}))
        return out

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._usage.get("prompt_tokens", 0), "output_tokens": 0},
        }  # fmt: skip
        return [event({"type": "message_start", "message": message}), event({"type": "ping"})]

    def _fail(self, message: str, status: int) -> list[bytes]:
        self.failed = True
        return [error_event(message, status)]

    def _text(self, text: str) -> list[bytes]:
        if self._open == "tool_use":
            # Held until the call's block closes: its arguments may still be coming.
            self._held.append(text)
            return []
        return self._append("text", "text_delta", "text", text)

    def _append(self, kind: str, delta_type: str, field: str, text: str) -> list[bytes]:
        out = self._start()
        if self._open != kind:
            out += self._close()
            out += self._open_block({"type": kind, field: ""} | _empty_signature(kind))
        return [*out, self._delta({"type": delta_type, field: text})]

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = self._start()
        function = call.get("function") or {}
        if call.get("id") is not None:  # a new call: its own block
            out += self._close()
            block = {"type": "tool_use", "id": call["id"], "name": function.get("name", ""),
                     "input": {}}  # fmt: skip
            out += self._open_block(block)
            self._call_index, self._called = call["index"], True
        arguments = function.get("arguments")
        if arguments and self._open == "tool_use" and call["index"] == self._call_index:
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _open_block(self, block: dict[str, Any]) -> list[bytes]:
        self._index += 1
        self._open = block["type"]
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return [event(start)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event({"type": "content_block_delta", "index": self._index, "delta": delta})

    def _close(self) -> list[bytes]:
        """Stop the open block, then send any held text as a block of its own."""
        out = self._stop_open()
        if self._held:
            text, self._held = "".join(self._held), []
            out += self._open_block({"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": text}))
            out += self._stop_open()
        return out

    def _stop_open(self) -> list[bytes]:
        if self._open is None:
            return []
        out = []
        if self._open == "thinking":
            out.append(self._delta({"type": "signature_delta", "signature": _signature()}))
        out.append(event({"type": "content_block_stop", "index": self._index}))
        self._open, self._call_index = None, None
        return out


def _empty_signature(kind: str) -> dict[str, str]:
    return {"signature": ""} if kind == "thinking" else {}
