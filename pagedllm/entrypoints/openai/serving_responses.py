"""``/v1/responses``: OpenAI's Responses API over the chat endpoint's path.

A Responses request is translated into a ``ChatCompletionRequest`` and run by
``ChatHandler.create``, so it shares everything a chat request gets (chat template, limits,
sampling checks, structured outputs, the reasoning and tool-call parsers); the chat answer
(a completion, or its stream of chunks) is translated back into a ``response`` object or the
Responses event stream. Finished responses are kept in a bounded in-memory store for
``GET /v1/responses/{id}``, its ``/input_items`` and ``previous_response_id``; background
responses (run after their request returns, cancellable) are in ``background_responses``.

Stored responses belong to the API key(s) that created them (``KeyOwner``, recorded by
``ApiKeyMiddleware``), as OpenAI scopes them to a project: to a request with other keys one
is exactly like an unknown id (the same 404), so tenants sharing a server cannot read,
continue, cancel or delete each other's responses, nor learn that they exist.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from pagedllm.entrypoints.openai import sse
from pagedllm.entrypoints.openai.background_responses import BackgroundRuns
from pagedllm.entrypoints.openai.errors import OpenAIError, error_body, from_engine_error
from pagedllm.entrypoints.openai.limits import ServerLimits
from pagedllm.entrypoints.openai.middleware import KeyOwner, request_owner, unless_disconnected
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, FieldError
from pagedllm.entrypoints.openai.responses_input_items import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InputItemsQuery,
    check_param_names,
    input_item_objects,
    item_page,
    requested_includes,
)
from pagedllm.entrypoints.openai.responses_protocol import (
    MESSAGE_ROLES,
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    IncompleteDetails,
    InputItem,
    InputTokensDetails,
    MessageItem,
    OutputTokensDetails,
    ReasoningItem,
    RefusedField,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
    ToolChoiceObject,
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    response_id,
)
from pagedllm.entrypoints.openai.serving_chat import ChatHandler
from pagedllm.entrypoints.openai.streams import streamed_response
from pagedllm.entrypoints.openai.unknown_fields import note_inert_field
from pagedllm.logger import init_logger

logger = init_logger(__name__)

# Request fields that mean the same in a chat request, copied when set.
_SAME_IN_CHAT = (
    "temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "logit_bias", "ignore_eos", "skip_special_tokens",
    "include_stop_str_in_output", "include_reasoning", "priority", "cache_salt",
    "prompt_cache_key", "chat_template_kwargs", "user", "parallel_tool_calls",
)  # fmt: skip
_TEXT_PARTS = ("input_text", "output_text")


# -- the store -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object, as returned
    # The conversation up to and including this response, as chat messages, without the
    # request's instructions: as OpenAI specifies, instructions do not carry over to a
    # response that continues this one.
    conversation: list[dict[str, Any]]
    owner: KeyOwner = None  # the key(s) that created it: only they find it
    # The request's input as item objects with their ids (``responses_input_items``), for
    # GET .../input_items: the conversation above has lost the ids and the item kinds.
    input_items: list[dict[str, Any]] = field(default_factory=list)
    # The JSON size of ``conversation`` where known (None: measured when stored). A turn
    # adds its own messages' size to the previous turn's: the store measured the whole
    # conversation again on every put (three per background turn), and a chain of long
    # turns (kept whole by cancels, or by truncation "auto") held the event loop 0.8 s a
    # put at 200 MB, every other request waiting.
    conversation_bytes: int | None = None
    input_items_bytes: int | None = None  # the same for ``input_items``

    def updated(self, response: dict[str, Any]) -> StoredResponse:
        """This entry with ``response`` in place of its own (same conversation, owner and
        input items: the background run's status changes must not change who can see it)."""
        return dataclasses.replace(self, response=response)


class ResponseStore:
    """Finished responses by id, at most ``max_entries`` of them and ``max_bytes`` of their
    JSON (the oldest evicted first; one larger than ``max_bytes`` is not kept);
    ``max_entries`` 0 keeps nothing. Used only from the event loop, so it needs no lock."""

    def __init__(self, max_entries: int, max_bytes: int = 256 << 20) -> None:
        if max_entries < 0:
            raise ValueError(f"--max-stored-responses must be at least 0, got {max_entries}.")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self._bytes = 0

    def put(self, response_id: str, entry: StoredResponse) -> None:
        size = json_size(entry.response) + conversation_size(entry)
        items = entry.input_items_bytes
        size += json_size(entry.input_items) if items is None else items
        if self.max_entries == 0 or size > self.max_bytes:
            return
        self._drop(response_id)
        self._entries[response_id] = (entry, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            # A background response still running is never evicted: other clients' requests
            # pushed one out, and its retrieval became a 500 and its cancel a 404 while it
            # ran on. Live ones are as many as the engine runs; they leave when they end.
            victim = next((key for key, (e, _) in self._entries.items() if not _live(e)), None)
            if victim is None:
                break
            self._drop(victim)

    def _drop(self, response_id: str) -> bool:
        dropped = self._entries.pop(response_id, None)
        if dropped is not None:
            self._bytes -= dropped[1]
        return dropped is not None

    def delete(self, response_id: str, owner: KeyOwner = None) -> bool:
        """Forget a response (its owner's ``DELETE``); False when ``owner`` has no such
        response stored."""
        return self.get(response_id, owner) is not None and self._drop(response_id)

    def get(self, response_id: str, owner: KeyOwner = None) -> StoredResponse | None:
        """The response if ``owner`` created it; another owner's is None, as a missing one
        (a 404 that does not reveal it exists)."""
        found = self._entries.get(response_id)
        if found is None or found[0].owner != owner:
            return None
        return found[0]

    def __len__(self) -> int:
        return len(self._entries)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON, as the store counts them."""
    return len(json.dumps(value, default=str))


def conversation_size(entry: StoredResponse) -> int:
    if entry.conversation_bytes is not None:
        return entry.conversation_bytes
    return json_size(entry.conversation)


def _live(entry: StoredResponse) -> bool:
    return entry.response.get("status") in ("queued", "in_progress")


def not_found(response_id: str, param: str = "response_id") -> OpenAIError:
    return OpenAIError(f"Response with id '{response_id}' not found.", 404, param)


# -- request translation ------------------------------------------------------------------


def input_messages(items: str | list[InputItem]) -> list[dict[str, Any]]:
    """The request's ``input`` as chat messages (a string is one user message)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        _add_item(messages, item, index)
    return messages


def _add_item(messages: list[dict[str, Any]], item: InputItem, index: int) -> None:
    """Append one input item. Items that belong to one assistant turn (reasoning, text,
    calls) are merged into one assistant message, as vLLM does, since chat templates
    render a turn's calls with its text."""
    last = messages[-1] if messages and messages[-1]["role"] == "assistant" else None
    if isinstance(item, MessageItem):
        _check_role(item.role, index)
        text = _text(item.content, index)
        if item.role == "assistant" and last is not None and last.get("content") is None:
            last["content"] = text
        else:
            messages.append({"role": item.role, "content": text})
    elif isinstance(item, FunctionCallItem):
        _add_call(messages, item.call_id, item.name, item.arguments)
    elif isinstance(item, FunctionCallOutputItem):
        messages.append(
            {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output, index)}
        )
    elif isinstance(item, ReasoningItem):
        text = _reasoning_text(item, index)
        if last is not None and "reasoning" not in last:
            last["reasoning"] = text
        else:
            messages.append({"role": "assistant", "content": None, "reasoning": text})
    else:
        raise RefusedField(
            "input", f"input[{index}]: items of type {item.type!r} are not supported by "
            "pagedllm; send message, function_call, function_call_output or reasoning items.",
        )  # fmt: skip


def _check_role(role: str, index: int) -> None:
    """A 400 naming ``input.N.role`` for a role the Responses API has no message of; a
    chat-completions tool message (the likeliest) is told what replaces it."""
    if role in MESSAGE_ROLES:
        return
    field = f"input.{index}.role"
    if role == "tool":
        raise FieldError(
            field, f"{field}: the Responses API has no messages of role 'tool' (those are "
            "chat completions'); send a tool's result as a function_call_output item, "
            '{"type": "function_call_output", "call_id": ..., "output": ...}, whose call_id '
            "is the function_call item's.",
        )  # fmt: skip
    raise FieldError(
        field, f"{field}: the role {role[:40]!r} is not a message role of the Responses API; "
        f"use one of {', '.join(MESSAGE_ROLES)}.",
    )  # fmt: skip


def _add_call(messages: list[dict[str, Any]], call_id: str, name: str, arguments: str) -> None:
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _text(content: str | list[ContentPart], index: int) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type not in _TEXT_PARTS:
            raise RefusedField(
                "input", f"input[{index}]: content parts of type {part.type!r} are not "
                "supported by pagedllm; only text (input_text, output_text) is served.",
            )  # fmt: skip
        if part.text is None:
            raise ValueError(f"input[{index}]: a {part.type} part needs its text.")
        texts.append(part.text)
    return "\n".join(texts)  # as the chat endpoint joins text parts


def _reasoning_text(item: ReasoningItem, index: int) -> str:
    if item.encrypted_content is not None:
        raise RefusedField(
            "input", f"input[{index}]: encrypted reasoning content is not supported by "
            "pagedllm; send the reasoning item's content as text.",
        )  # fmt: skip
    parts = item.content or item.summary
    return parts[0].text if parts else ""


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the chat messages a continuing request sees. Reasoning
    is left out, as vLLM does: models are not shown their earlier thinking."""
    messages: list[dict[str, Any]] = []
    for item in output:
        if item["type"] == "message":
            text = "".join(part["text"] for part in item["content"])
            messages.append({"role": "assistant", "content": text})
        elif item["type"] == "function_call":
            _add_call(messages, item["call_id"], item["name"], item["arguments"])
    return messages


def continues_final_message(items: str | list[InputItem]) -> bool:
    """An input that ends with an unfinished assistant message asks the model to continue
    it (vLLM's rule: status in_progress or incomplete)."""
    if isinstance(items, str) or not items:
        return False
    last = items[-1]
    return (
        isinstance(last, MessageItem)
        and last.role == "assistant"
        and last.status in ("in_progress", "incomplete")
    )


def chat_request(
    request: ResponsesRequest,
    messages: list[dict[str, Any]],
    continue_final: bool,
    response_id: str | None = None,
    max_model_len: int | None = None,
) -> ChatCompletionRequest:
    """The chat request that runs a Responses request (under the response's id, so the
    engine's logs name it)."""
    logprobs = request.wants_logprobs()
    keep = None
    if request.truncation == "auto" and max_model_len is not None:
        keep = auto_truncation(max_model_len, request.max_output_tokens)
    fields: dict[str, Any] = {
        "model": request.model,
        "request_id": response_id,
        "messages": messages,
        "stream": bool(request.stream),
        "stream_options": {"include_usage": True} if request.stream else None,
        "max_completion_tokens": request.max_output_tokens,
        "tools": [_chat_tool(t) for t in request.tools or [] if isinstance(t, FunctionTool)]
        or None,
        "tool_choice": _chat_tool_choice(request.tool_choice),
        "response_format": _response_format(request.text),
        "reasoning_effort": request.reasoning.effort if request.reasoning else None,
        "logprobs": logprobs,
        "top_logprobs": (request.top_logprobs or 0) if logprobs else None,
        "add_generation_prompt": not continue_final,
        "continue_final_message": continue_final,
        "truncate_prompt_tokens": keep,
        **{name: getattr(request, name) for name in _SAME_IN_CHAT},
    }
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None}
        )
    except ValidationError as exc:
        # Field types match, so this is a value the chat request refuses: one line of it.
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"{where}: {first.get('msg', 'invalid value')}") from None


def auto_truncation(max_model_len: int, max_output_tokens: int | None) -> int:
    """Prompt tokens kept with ``truncation: "auto"``: the last ones, leaving room for
    max_output_tokens (one token without it). OpenAI drops the oldest items; vLLM keeps the
    last max_model_len tokens and then has no room left to answer."""
    keep = max_model_len - (max_output_tokens or 1)
    if keep < 1:
        raise ValueError(
            f"max_output_tokens ({max_output_tokens}) leaves no room for the prompt in this "
            f"model's context of {max_model_len} tokens."
        )
    return keep


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function = tool.model_dump(exclude={"type"}, exclude_none=True)
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | ToolChoiceObject | None) -> str | dict[str, Any] | None:
    if isinstance(choice, ToolChoiceObject):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _response_format(text: TextConfig | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if text.verbosity not in (None, "medium"):
        note_inert_field("ResponsesRequest", "text.verbosity", "the model's length is its own")
    spec = text.format
    if spec is None or spec.type == "text":
        return None
    if spec.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": spec.name, "schema": spec.schema_, "strict": spec.strict}
    return {
        "type": "json_schema",
        "json_schema": {k: v for k, v in schema.items() if v is not None},
    }


# -- the handler ---------------------------------------------------------------------------


@dataclass
class _Turn:
    """What one create call carries from its request to its response."""

    request: ResponsesRequest
    id: str
    model: str
    created_at: int
    # previous conversation + this input (without instructions): stored with the output
    conversation: list[dict[str, Any]]
    owner: KeyOwner = None  # the key(s) of the request: the stored response's owner
    input_items: list[dict[str, Any]] = field(default_factory=list)  # stored with it
    conversation_bytes: int = 0  # conversation's JSON size (``StoredResponse``'s)
    input_items_bytes: int = 0  # input_items' JSON size

    def stored(self, response: dict[str, Any]) -> StoredResponse:
        """``response`` with this turn's conversation, input items and owner, sized."""
        return StoredResponse(
            response, self.conversation, self.owner, self.input_items,
            self.conversation_bytes, self.input_items_bytes,
        )  # fmt: skip


class ResponsesHandler:
    def __init__(self, chat: ChatHandler, store: ResponseStore, runs: BackgroundRuns) -> None:
        self.chat = chat
        self.store = store
        self.runs = runs

    async def create(self, request: ResponsesRequest, owner: KeyOwner = None) -> Response:
        request.refuse_unserved()
        self._check_background(request)
        if request.reasoning and (request.reasoning.summary or request.reasoning.generate_summary):
            note_inert_field("ResponsesRequest", "reasoning.summary", "no summaries are written")
        if request.max_tool_calls is not None:  # OpenAI's bound counts built-in tools' calls
            note_inert_field("ResponsesRequest", "max_tool_calls", "it bounds calls of built-in "
                             "tools, and this server runs function tools only")  # fmt: skip
        model = self.chat.models.resolve(request.model)
        previous = self._previous(request.previous_response_id, owner)
        new = input_messages(request.input)
        conversation = (previous.conversation if previous else []) + new
        conversation_bytes = (conversation_size(previous) if previous else 0) + json_size(new)
        if not conversation:
            raise ValueError("input must not be empty.")
        system = [{"role": "system", "content": request.instructions}]
        messages = (system if request.instructions else []) + conversation
        items = input_item_objects(request.input)  # ids fixed now: pages are found by them
        turn = _Turn(
            request, response_id(), model, int(time.time()), conversation, owner, items,
            conversation_bytes, json_size(items),
        )  # fmt: skip
        continued = continues_final_message(request.input)
        max_len = self.chat.models.max_model_len
        chat = chat_request(request, messages, continued, turn.id, max_len)
        if request.background:
            return self._start_background(turn, chat)
        result = await self.chat.create(chat)
        if isinstance(result, StreamingResponse):
            events = self._stream(turn, result.body_iterator)
            return streamed_response(events)
        response = await self._from_completion(turn, json.loads(result.body))
        return JSONResponse(response)

    def retrieve(
        self,
        response_id: str,
        stream: bool,
        starting_after: int | None,
        owner: KeyOwner = None,
    ) -> Response:
        """``owner``'s stored response; with ``stream``, a streamed background response's
        events after ``starting_after`` (all of them without), live while it runs."""
        stored = self.store.get(response_id, owner)
        if stored is None and self.runs.get(response_id, owner) is None:
            raise not_found(response_id)
        if stream:
            events = self.runs.replay(response_id, starting_after, owner)
            return streamed_response(events)
        if starting_after is not None:
            raise RefusedField("starting_after", "starting_after applies with stream=true.")
        if stored is None:  # evicted after it ended; its events remain only to stream
            raise not_found(response_id)
        return JSONResponse(stored.response)

    def input_items(
        self, response_id: str, query: InputItemsQuery, owner: KeyOwner = None
    ) -> JSONResponse:
        """A page of the input items of ``owner``'s stored response (404 as retrieve's
        for another owner's, an unknown or a deleted one)."""
        stored = self.store.get(response_id, owner)
        if stored is None:
            raise not_found(response_id)
        return JSONResponse(item_page(stored.input_items, query))

    async def cancel(self, response_id: str, owner: KeyOwner = None) -> JSONResponse:
        """Stop ``owner``'s background response that is queued or in progress (as vLLM and
        OpenAI: anything else cannot be cancelled). It is kept with status ``cancelled``."""
        stored = self.store.get(response_id, owner)
        if stored is None:
            raise not_found(response_id)
        status = stored.response["status"]
        if not stored.response.get("background"):
            raise OpenAIError("Cannot cancel a synchronous response.", 400, "response_id")
        if not _live(stored) or not self.runs.is_running(response_id, owner):
            raise OpenAIError(
                f"Cannot cancel a response whose status is {status!r}.", 400, "response_id"
            )
        cancelled = {**stored.response, "status": "cancelled"}
        self.store.put(response_id, stored.updated(cancelled))
        await self.runs.cancel(response_id, owner)
        return JSONResponse(cancelled)

    async def delete(self, response_id: str, owner: KeyOwner = None) -> JSONResponse:
        """Forget ``owner``'s response, as OpenAI's ``DELETE``: a background run still
        queued or in progress is stopped first (its engine request aborted), then the stored
        response and any events kept for streaming it again are dropped."""
        if self.store.get(response_id, owner) is None and self.runs.get(response_id, owner) is None:
            raise not_found(response_id)
        await self.runs.cancel(response_id, owner)  # nothing to do unless it runs
        self.store.delete(response_id, owner)
        self.runs.forget(response_id, owner)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    def _previous(self, previous_id: str | None, owner: KeyOwner) -> StoredResponse | None:
        if previous_id is None:
            return None
        stored = self.store.get(previous_id, owner)
        if stored is None:
            raise not_found(previous_id, "previous_response_id")
        status = stored.response["status"]
        if status in ("queued", "in_progress"):
            raise OpenAIError(
                f"Response '{previous_id}' is still {status}: continue from it once it has "
                "finished.", 400, "previous_response_id",
            )  # fmt: skip
        return stored

    # -- background responses ------------------------------------------------------------

    def _check_background(self, request: ResponsesRequest) -> None:
        if not request.background:
            return
        if request.store is False:
            raise RefusedField(
                "background", "A background response must be stored: set store to true "
                "(or leave it out).",
            )  # fmt: skip
        if self.store.max_entries == 0:
            raise RefusedField(
                "background", "Background responses need the response store, which this "
                "server runs without (--max-stored-responses 0).",
            )  # fmt: skip

    def _start_background(self, turn: _Turn, chat: ChatCompletionRequest) -> Response:
        """Store the response as queued, start its run, and answer at once (with the run's
        events as they come, when streamed)."""
        self.runs.check_room()
        queued = self._response(turn, "queued", [], None).model_dump()
        # With its conversation so far: a cancelled run is kept as it stood, and a turn that
        # continues from it keeps the earlier turns and this one's input.
        self.store.put(turn.id, turn.stored(queued))
        if self.store.get(turn.id, turn.owner) is None:
            # Too large to keep (one entry past --max-stored-response-bytes): its run was
            # started anyway, and answered 404 to retrieve and cancel while it ran.
            raise RefusedField(
                "background", "This response is too large to store (its input, instructions "
                "and the conversation it continues are past --max-stored-response-bytes), and "
                "a background response must be stored; send it without background.",
            )  # fmt: skip
        streamed = bool(turn.request.stream)
        self.runs.start(turn.id, self._run_background(turn, chat), streamed, turn.owner)
        if streamed:
            events = self.runs.replay(turn.id, None, turn.owner)
            return streamed_response(events)
        return JSONResponse(queued)

    async def _run_background(self, turn: _Turn, chat: ChatCompletionRequest) -> None:
        self._set_status(turn, "in_progress")
        try:
            result = await self.chat.create(chat)
            if isinstance(result, StreamingResponse):
                run = self.runs.get(turn.id, turn.owner)
                assert run is not None
                async for event in self._stream(turn, result.body_iterator):
                    run.add(event)
            else:
                await self._from_completion(turn, json.loads(result.body))
        except Exception as exc:  # a cancel (CancelledError) is no Exception: it passes
            # Every failure ends the run as failed: the engine's (overloaded, dead, a failed
            # request) were left to the run's guard, and the response stayed in_progress
            # for good: never evicted (a live one), never cancellable, never continued.
            error = _run_error(exc)
            self._set_failed(turn, error)
            self._stream_failure(turn, error)
            return
        stored = self.store.get(turn.id, turn.owner)
        if stored is not None and stored.response["status"] == "in_progress":
            # the stream ended in an error event: nothing final was stored
            self._set_failed(turn, None)

    def _stream_failure(self, turn: _Turn, exc: OpenAIError) -> None:
        """A streamed run that failed (at admission: a prompt too long, a bad value) ends
        its events with ``error`` and ``response.failed``, after ``response.created`` if
        nothing was sent yet: its readers got a 200 with an empty event stream, and no
        word of why (the failure was only in the stored response)."""
        run = self.runs.get(turn.id, turn.owner)
        if run is None or not run.streamed:
            return
        events = _EventWriter()
        events.sequence = len(run.events)  # event i has sequence_number i
        if not run.events:
            created = self._response(turn, "in_progress", [], None).model_dump()
            run.add(events.event("response.created", response=created))
        error = error_body(exc.message, exc.status, exc.param)["error"]  # as a chat stream's
        for event in self._failed(turn, events, error):
            run.add(event)

    def _set_status(self, turn: _Turn, status: str) -> None:
        stored = self.store.get(turn.id, turn.owner)
        if stored is not None:
            self.store.put(turn.id, stored.updated({**stored.response, "status": status}))

    def _set_failed(self, turn: _Turn, exc: OpenAIError | None) -> None:
        failed = self._response(turn, "failed", [], None)
        if exc is None:
            failed.error = _response_error("The request failed.", None)
        else:
            failed.error = _response_error(exc.message, exc.status)
        # Its input items stay listed: the input it failed on is what the client looks for.
        # Its conversation is kept, as a cancelled one's: a turn that continues from it was
        # answered with the whole history silently dropped (the entry kept none).
        self.store.put(turn.id, turn.stored(failed.model_dump()))

    # -- building the response -----------------------------------------------------------

    async def _from_completion(self, turn: _Turn, completion: dict[str, Any]) -> dict[str, Any]:
        choice = completion["choices"][0]
        message = choice["message"]
        reasoning, content = message.get("reasoning"), message.get("content")
        output = []
        if reasoning:
            output.append(reasoning_item(item_id("rs"), reasoning, "completed"))
        if content:
            logprobs = (choice.get("logprobs") or {}).get("content")
            output.append(message_item(item_id("msg"), content, logprobs, "completed"))
        for call in message.get("tool_calls") or []:
            function = call["function"]
            output.append(
                function_call_item(
                    item_id("fc"), call["id"], function["name"], function["arguments"], "completed"
                )
            )
        usage = await self._usage(completion["usage"], reasoning or "")
        return self._finish(turn, choice["finish_reason"], output, usage)

    async def _usage(self, chat_usage: dict[str, Any] | None, reasoning: str) -> ResponseUsage:
        """Responses' usage from the chat's. Reasoning tokens are the reasoning text
        tokenized again: the parser splits text, not token ids."""
        chat_usage = chat_usage or {}
        prompt, completion = (
            chat_usage.get("prompt_tokens", 0),
            chat_usage.get("completion_tokens", 0),
        )
        cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        thought = len(await self.chat.renderer.encode(reasoning, False)) if reasoning else 0
        return ResponseUsage(
            input_tokens=prompt,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens=completion,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=min(thought, completion)),
            total_tokens=prompt + completion,
        )

    def _finish(
        self,
        turn: _Turn,
        finish_reason: str | None,
        output: list[dict[str, Any]],
        usage: ResponseUsage,
    ) -> dict[str, Any]:
        """The final response object; kept in the store when the request asked for it."""
        response = self._response(turn, "completed", output, usage)
        if finish_reason == "length":
            response.status = "incomplete"
            response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        elif finish_reason == "error":
            response.status = "failed"
            response.error = ResponseError(
                code="server_error", message="The engine could not complete this request."
            )
        body = response.model_dump()
        stored = self.store.get(turn.id, turn.owner)
        if stored is not None and stored.response["status"] == "cancelled":
            return stored.response  # cancelled while its last tokens came: it stays so
        if turn.request.store:
            answer = output_messages(output)
            entry = dataclasses.replace(
                turn.stored(body),
                conversation=turn.conversation + answer,
                conversation_bytes=turn.conversation_bytes + json_size(answer),
            )
            self.store.put(turn.id, entry)
        return body

    def _response(
        self,
        turn: _Turn,
        status: str,
        output: list[dict[str, Any]],
        usage: ResponseUsage | None,
    ) -> ResponseObject:
        """The response object with the request's settings echoed, as OpenAI and vLLM do."""
        request, defaults = turn.request, self.chat.defaults
        tools = [t.model_dump(by_alias=True) for t in request.tools or []]
        choice = request.tool_choice
        text = request.text.model_dump(by_alias=True, exclude_none=True) if request.text else {}
        return ResponseObject(
            id=turn.id,
            created_at=turn.created_at,
            status=status,  # type: ignore[arg-type]
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            max_tool_calls=request.max_tool_calls,
            model=turn.model,
            output=output,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            reasoning=request.reasoning.model_dump() if request.reasoning else None,
            service_tier=request.service_tier or "auto",
            temperature=_pick(request.temperature, defaults.get("temperature"), 1.0),
            text={"format": {"type": "text"}, **text},
            tool_choice=(choice.model_dump() if isinstance(choice, ToolChoiceObject) else choice)
            or ("auto" if tools else "none"),
            tools=tools,
            top_logprobs=request.top_logprobs,
            top_p=_pick(request.top_p, defaults.get("top_p"), 1.0),
            truncation=request.truncation or "disabled",
            usage=usage,
            user=request.user,
            metadata=request.metadata,
            background=bool(request.background),
        )

    # -- streaming -----------------------------------------------------------------------

    async def _stream(self, turn: _Turn, chunks: AsyncIterable[Any]) -> AsyncIterator[bytes]:
        """The Responses events for a chat stream's chunks. Closing this stream (client
        gone) closes the chat stream, which aborts the request."""
        events = _EventWriter()
        start = self._response(turn, "in_progress", [], None).model_dump()
        yield events.event("response.created", response=start)
        yield events.event("response.in_progress", response=start)
        finish_reason, usage = None, None
        try:
            async for raw in chunks:
                chunk = _chunk(raw)
                if chunk is None:
                    break
                if "error" in chunk:
                    for event in self._failed(turn, events, chunk["error"]):
                        yield event
                    return
                usage = chunk.get("usage") or usage
                for choice in chunk["choices"]:
                    for event in events.delta(choice["delta"], choice.get("logprobs")):
                        yield event
                    finish_reason = choice.get("finish_reason") or finish_reason
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        for event in events.close():
            yield event
        final_usage = await self._usage(usage, events.reasoning)
        final = self._finish(turn, finish_reason, events.output, final_usage)
        yield events.event("response.completed", response=final)

    def _failed(self, turn: _Turn, events: _EventWriter, error: dict[str, Any]) -> list[bytes]:
        """OpenAI's ``error`` event, then ``response.failed`` (nothing is stored)."""
        message = str(error.get("message", "The request failed."))
        failed = self._response(turn, "failed", events.output, None)
        failed.error = _response_error(message, error.get("code"))
        return [
            events.event(
                "error", code=failed.error.code, message=message, param=error.get("param")
            ),
            events.event("response.failed", response=failed.model_dump()),
        ]


def _response_error(message: str, status: object) -> ResponseError:
    """A failed response's error: the request's fault (a 4xx status) or the server's."""
    client_side = isinstance(status, int) and 400 <= status < 500
    return ResponseError(
        code="invalid_request_error" if client_side else "server_error", message=message
    )


def _run_error(exc: Exception) -> OpenAIError:
    """A background run's failure as the error its response records (and streams): the
    request's own or the engine's, as a foreground request would be answered; anything
    else is logged and told only as a server error."""
    if isinstance(exc, OpenAIError):
        return exc
    error = from_engine_error(exc)
    if error is None:
        logger.error("A background response failed unexpectedly", exc_info=exc)
        error = OpenAIError("Internal server error (see the server log).", 500)
    return error


def _pick(value: float | None, default: Any, fallback: float) -> float:
    if value is not None:
        return value
    return default if isinstance(default, int | float) else fallback


def _chunk(raw: bytes | str) -> dict[str, Any] | None:
    """One chat SSE event's JSON (the chat stream yields one event per item); None at the
    end of the stream."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    data = text.strip().removeprefix("data: ")
    return None if data == "[DONE]" else json.loads(data)


@dataclass
class _OpenItem:
    kind: str  # "reasoning" | "message" | "function_call"
    id: str
    output_index: int
    text: str = ""  # the reasoning, the message text, or the call's arguments
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    call_index: int | None = None


class _EventWriter:
    """Responses stream events from chat deltas. One output item is open at a time (the
    reasoning, the message, or one function call, in the order the deltas bring them); a
    delta of another kind closes it and opens the next, as vLLM's simple event processor
    does."""

    def __init__(self) -> None:
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # closed items, in output order
        self.reasoning = ""  # all reasoning text, for usage
        self._logprobs: list[dict[str, Any]] = []  # not yet sent with a text delta
        self._open: _OpenItem | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\n" + sse.event(body)

    def delta(self, delta: dict[str, Any], logprobs: dict[str, Any] | None) -> list[bytes]:
        """The events for one chat delta: its reasoning, then its text, then its calls."""
        events: list[bytes] = []
        # Tokens whose text the parsers hold back (or route to reasoning) bring logprobs
        # without text: they go with the next text delta, so the message's logprobs cover
        # every token, as the non-streamed response's do.
        self._logprobs += (logprobs or {}).get("content") or []
        if delta.get("reasoning"):
            self.reasoning += delta["reasoning"]
            events += self._text("reasoning", delta["reasoning"], [])
        if delta.get("content"):
            events += self._text("message", delta["content"], self._logprobs)
            self._logprobs = []
        for piece in delta.get("tool_calls") or []:
            events += self._call(piece)
        return events

    def close(self) -> list[bytes]:
        """The done events of the open item (none when nothing is open)."""
        item, self._open = self._open, None
        if item is None:
            return []
        if item.kind == "function_call":
            done = function_call_item(item.id, item.call_id, item.name, item.text, "completed")
            events = [
                self._at(
                    item,
                    "response.function_call_arguments.done",
                    name=item.name,
                    arguments=item.text,
                )
            ]
        else:
            done, part, kind = self._done_parts(item)
            extra = {"logprobs": item.logprobs} if item.kind == "message" else {}
            events = [
                self._at(item, f"response.{kind}.done", content_index=0, text=item.text, **extra),
                self._at(item, "response.content_part.done", content_index=0, part=part),
            ]
        self.output.append(done)
        done_event = self.event(
            "response.output_item.done", output_index=item.output_index, item=done
        )
        events.append(done_event)
        return events

    @staticmethod
    def _done_parts(item: _OpenItem) -> tuple[dict[str, Any], dict[str, Any], str]:
        if item.kind == "reasoning":
            done = reasoning_item(item.id, item.text, "completed")
            return done, {"type": "reasoning_text", "text": item.text}, "reasoning_text"
        done = message_item(item.id, item.text, item.logprobs, "completed")
        return done, done["content"][0], "output_text"

    def _text(self, kind: str, text: str, logprobs: list[dict[str, Any]] | None) -> list[bytes]:
        events = [] if self._open and self._open.kind == kind else self._switch(kind)
        item = self._open
        assert item is not None
        item.text += text
        if kind == "reasoning":
            delta = self._at(item, "response.reasoning_text.delta", content_index=0, delta=text)
            return [*events, delta]
        item.logprobs += logprobs or []
        delta = self._at(
            item,
            "response.output_text.delta",
            content_index=0,
            delta=text,
            logprobs=logprobs or [],
        )
        return [*events, delta]

    def _call(self, piece: dict[str, Any]) -> list[bytes]:
        """A piece of a tool call: its first piece (with the call's id and name) opens a
        function_call item; every piece adds arguments text."""
        index, function = piece.get("index"), piece.get("function") or {}
        item = self._open
        events: list[bytes] = []
        if item is None or item.kind != "function_call" or item.call_index != index:
            events = self._switch("function_call")
            item = self._open
            assert item is not None
            item.call_index, item.name = index, function.get("name") or ""
            item.call_id = piece.get("id") or item_id("call")
            added = function_call_item(item.id, item.call_id, item.name, "", "in_progress")
            added_event = self.event(
                "response.output_item.added", output_index=item.output_index, item=added
            )
            events.append(added_event)
        arguments = function.get("arguments") or ""
        if arguments:
            item.text += arguments
            events.append(self._at(item, "response.function_call_arguments.delta", delta=arguments))
        return events

    def _switch(self, kind: str) -> list[bytes]:
        """Close the open item and open one of ``kind`` (function calls announce themselves
        once their name is known, in ``_call``)."""
        events = self.close()
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        item = self._open = _OpenItem(kind, item_id(prefix), len(self.output))
        if kind == "function_call":
            return events
        if kind == "reasoning":
            added = reasoning_item(item.id, "", "in_progress")
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            added = message_item(item.id, "", None, "in_progress")
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            *events,
            self.event("response.output_item.added", output_index=item.output_index, item=added),
            self._at(item, "response.content_part.added", content_index=0, part=part),
        ]

    def _at(self, item: _OpenItem, kind: str, **fields: Any) -> bytes:
        return self.event(kind, item_id=item.id, output_index=item.output_index, **fields)


# -- routes --------------------------------------------------------------------------------


def install_responses_routes(
    app: FastAPI, chat: ChatHandler, limits: ServerLimits
) -> ResponsesHandler:
    """``POST /v1/responses``, ``GET /v1/responses/{id}``, ``GET
    /v1/responses/{id}/input_items``, ``POST /v1/responses/{id}/cancel`` and ``DELETE
    /v1/responses/{id}`` on ``app``, answered through ``chat``."""
    store = ResponseStore(limits.max_stored_responses, limits.max_stored_response_bytes)
    runs = BackgroundRuns(
        min(limits.max_background_responses, limits.max_stored_responses),
        max_finished_bytes=limits.max_stored_response_bytes,
    )
    handler = ResponsesHandler(chat, store, runs)

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, raw: Request) -> Response:
        created = handler.create(body, request_owner(raw))
        return await unless_disconnected(raw, created) or Response(status_code=499)

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(
        response_id: str, raw: Request, stream: bool = False, starting_after: int | None = None
    ) -> Response:
        return handler.retrieve(response_id, stream, starting_after, request_owner(raw))

    @app.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(
        response_id: str,
        raw: Request,
        after: str | None = None,
        include: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        order: Literal["asc", "desc"] = "desc",
    ) -> JSONResponse:
        """The input items of a stored response, a page at a time (OpenAI's "List input
        items"); limit and order are checked here, by their schema."""
        params = raw.query_params
        check_param_names(params.keys())
        # The openai clients send a list as include[]=...; others as include=... .
        wanted = requested_includes([*(include or []), *params.getlist("include[]")])
        query = InputItemsQuery(after, wanted, limit, order)
        return handler.input_items(response_id, query, request_owner(raw))

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(response_id: str, raw: Request) -> JSONResponse:
        return await handler.cancel(response_id, request_owner(raw))

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, raw: Request) -> JSONResponse:
        return await handler.delete(response_id, request_owner(raw))

    return handler
