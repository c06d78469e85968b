"""Request and response bodies of OpenAI's Responses API (``/v1/responses``), as vLLM 0.26
serves it for models without the harmony format.

The request is typed as strictly as ``protocol.py`` (unknown top-level fields are ignored
and logged once). Items, tools and tool choices whose kind the server cannot serve (built-in
tools, images, item references) are parsed as a catch-all kind so the handler can refuse
them with a 400 that names them, rather than a schema error that lists every alternative.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from pagedllm.entrypoints.openai.limits import BoundedList
from pagedllm.entrypoints.openai.protocol import (
    OpenAIModel,
    UnsupportedField,
    _check_metadata,
    check_token_count,
)
from pagedllm.entrypoints.openai.tool_choice import check_unique_names

# The one ``include`` value the server produces (the others name outputs of built-in tools,
# images, or encrypted reasoning).
INCLUDE_LOGPROBS = "message.output_text.logprobs"

ItemStatus = Literal["in_progress", "completed", "incomplete"]


def response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def item_id(prefix: str) -> str:
    """An output item's id: ``msg_``, ``rs_`` or ``fc_`` and a random hex (vLLM's form)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class RefusedField(UnsupportedField):
    """A value the server understands but cannot honour: a 400 naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        ValueError.__init__(self, message)
        self.field = field


# -- input items ---------------------------------------------------------------------------


class ContentPart(OpenAIModel):
    """A part of a message's content; only text parts are served (checked by the handler,
    which names the part type it refuses)."""

    type: str
    text: str | None = None
    # An output_text part sent back as input carries these: accepted, not used.
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


# The roles of a message item. A chat-completions ``tool`` message has no counterpart: a
# tool's result is a function_call_output item.
MESSAGE_ROLES = ("user", "assistant", "system", "developer")


class MessageItem(OpenAIModel):
    type: Literal["message"] = "message"
    # Any string, checked against MESSAGE_ROLES by the handler: a schema error here was
    # reported on the first alternative of the ``input`` union ("input.str: Input should
    # be a valid string"), not on the item's role.
    role: str
    content: str | BoundedList[ContentPart]
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallItem(OpenAIModel):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str
    output: str | BoundedList[ContentPart]
    id: str | None = None
    status: ItemStatus | None = None


class ReasoningText(OpenAIModel):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(OpenAIModel):
    type: Literal["reasoning"]
    id: str | None = None
    summary: BoundedList[ReasoningText] = Field(default_factory=list)
    content: BoundedList[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


class _Refused(BaseModel):
    """A kind the handler refuses by its type: its other fields are not read, so they are
    not logged as unknown either."""

    model_config = ConfigDict(extra="ignore", strict=True)


class OtherItem(_Refused):
    """Any other item type (item_reference, web_search_call, ...): refused by name."""

    type: str


def _item_kind(value: Any) -> str | None:
    """The item's kind; a message may omit ``type`` (OpenAI's "easy input message")."""
    if isinstance(value, BaseModel):
        value = {"type": getattr(value, "type", None)}
    if not isinstance(value, dict):
        return None
    kind = value.get("type", "message" if "role" in value else None)
    if kind in ("message", "function_call", "function_call_output", "reasoning"):
        return kind
    return "other" if isinstance(kind, str) else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_kind),
]


# -- tools, tool choice, text format, reasoning ----------------------------------------------


class FunctionTool(OpenAIModel):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(_Refused):
    """A built-in tool (web_search, file_search, mcp, ...): refused by name."""

    type: str


def _tool_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        value = {"type": getattr(value, "type", None)}
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return "function" if value["type"] == "function" else "other"


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")],
    Discriminator(_tool_kind),
]


class ToolChoiceObject(OpenAIModel):
    """``{"type": "function", "name": ...}``; other types are refused by the handler."""

    type: str
    name: str | None = None


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    # "schema" would shadow BaseModel.schema; the JSON key keeps its name through the alias.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAIModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(OpenAIModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


# -- the request ---------------------------------------------------------------------------


class ResponsesRequest(OpenAIModel):
    # OpenAI's fields
    model: str | None = None
    input: str | BoundedList[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    stream: bool | None = False
    background: bool | None = False
    include: list[str] | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningConfig | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    text: TextConfig | None = None
    tools: BoundedList[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    prompt: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    # vLLM's extras (the openai client sends them through extra_body)
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    include_reasoning: bool = True
    priority: int = 0
    cache_salt: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    _token_count = field_validator("max_output_tokens")(check_token_count)

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        _check_metadata(self.metadata)
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}.")
        return self

    def refuse_unserved(self) -> None:
        """A 400 naming the first field whose value this server cannot honour."""
        for name in ("prompt", "conversation"):
            if getattr(self, name) is not None:
                raise RefusedField(
                    name, f"The request field '{name}' is not supported by pagedllm: send the "
                    "input (and previous_response_id) instead.",
                )  # fmt: skip
        unknown = [v for v in self.include or [] if v != INCLUDE_LOGPROBS]
        if unknown:
            raise RefusedField(
                "include", f"include {unknown[0]!r} is not supported by pagedllm; only "
                f"{INCLUDE_LOGPROBS!r} is produced.",
            )  # fmt: skip
        if self.service_tier not in (None, "auto", "default"):
            raise RefusedField(
                "service_tier", f"service_tier {self.service_tier!r} is not supported by "
                'pagedllm; use "auto" or "default".',
            )  # fmt: skip
        self._refuse_tools()

    def _refuse_tools(self) -> None:
        for i, tool in enumerate(self.tools or []):
            if isinstance(tool, OtherTool):
                raise RefusedField(
                    "tools", f"tools[{i}]: the built-in tool type {tool.type!r} is not "
                    "supported by pagedllm; only function tools are served.",
                )  # fmt: skip
        # Every tool is a function tool past the loop: names keep their indexes.
        check_unique_names(
            [t.name for t in self.tools or [] if isinstance(t, FunctionTool)], "tools.{}.name"
        )
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceObject):
            if choice.type != "function":
                raise RefusedField(
                    "tool_choice", f"tool_choice of type {choice.type!r} is not supported by "
                    'pagedllm; use "none", "auto", "required" or {"type": "function", '
                    '"name": ...}.',
                )  # fmt: skip
            if choice.name is None:
                raise RefusedField("tool_choice", "A function tool_choice needs a name.")

    def wants_logprobs(self) -> bool:
        return INCLUDE_LOGPROBS in (self.include or [])


# -- the response --------------------------------------------------------------------------


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The ``response`` object: returned, streamed (created / in_progress / completed), kept
    for retrieval. Output items are plain dicts in OpenAI's item shapes."""

    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["completed", "incomplete", "in_progress", "failed", "cancelled", "queued"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[dict[str, Any]] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: str = "auto"
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    background: bool = False


# -- output items (OpenAI's shapes, as dicts) ------------------------------------------------


def message_item(
    id_: str, text: str, logprobs: list[dict[str, Any]] | None, status: ItemStatus
) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}]
    return {
        "id": id_, "type": "message", "role": "assistant", "status": status,
        "content": content if text else [],
    }  # fmt: skip


def reasoning_item(id_: str, text: str, status: ItemStatus) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": id_, "type": "reasoning", "summary": [], "content": content, "status": status}


def function_call_item(
    id_: str, call_id: str, name: str, arguments: str, status: ItemStatus
) -> dict[str, Any]:
    return {
        "id": id_, "type": "function_call", "call_id": call_id, "name": name,
        "arguments": arguments, "status": status,
    }  # fmt: skip
