"""Request and response bodies of Anthropic's Messages API (``POST /v1/messages`` and
``POST /v1/messages/count_tokens``), the fields vLLM 0.26 reads.

Requests derive from ``OpenAIModel``: typed strictly, unknown fields ignored and logged
once by name (never by value: ``metadata.user_id`` may identify a person). Content the
server cannot honour is refused with a 400 that names it: image and document blocks
(pagedllm serves text-only models), block types it does not know, server tools (it runs
none). ``serving_messages.py`` translates these to and from the chat path; responses are
built from the models below (streamed events as plain dicts of the same shapes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from pagedllm.entrypoints.openai.limits import BoundedList
from pagedllm.entrypoints.openai.protocol import OpenAIModel, UnsupportedField

# The block types a request may carry, and where each may stand.
_ROLE_BLOCKS = {
    "user": ("text", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
    "system": ("text",),
}
_BLOCK_TYPES = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking")
_MEDIA_TYPES = ("image", "document")


def _text_or_blocks(value: Any) -> str:
    return "text" if isinstance(value, str) else "blocks"


def refuse_unknown_blocks(value: Any, allowed: tuple[str, ...]) -> Any:
    """A clear 400 for a block type this server cannot take, before the union of block
    models reports every way the block failed to match."""
    if not isinstance(value, list):
        return value
    for block in value:
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str) or kind in allowed:
            continue  # the block models answer a missing or mistyped "type"
        if kind in _MEDIA_TYPES:
            raise ValueError(
                f"{kind} content blocks are not supported: pagedllm serves text-only models."
            )
        raise ValueError(
            f"content blocks of type {kind!r} are not supported here (supported: "
            f"{', '.join(allowed)})."
        )
    return value


# -- content blocks ----------------------------------------------------------------------


class TextBlock(OpenAIModel):
    type: Literal["text"]
    text: str
    # Accepted without effect: the prefix cache is automatic here, and citations come back
    # only because clients echo earlier responses.
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None


class ToolUseBlock(OpenAIModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(OpenAIModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: (
        Annotated[
            Annotated[str, Tag("text")] | Annotated[BoundedList[TextBlock], Tag("blocks")],
            Discriminator(_text_or_blocks),
        ]
        | None
    ) = None
    # Accepted without effect, as vLLM: the result's text goes to the model as it is.
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return refuse_unknown_blocks(value, ("text",))

    def content_text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(block.text for block in self.content)


class ThinkingBlock(OpenAIModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(OpenAIModel):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]
Content = Annotated[
    Annotated[str, Tag("text")] | Annotated[BoundedList[ContentBlock], Tag("blocks")],
    Discriminator(_text_or_blocks),
]
SystemContent = Annotated[
    Annotated[str, Tag("text")] | Annotated[BoundedList[TextBlock], Tag("blocks")],
    Discriminator(_text_or_blocks),
]


class MessageParam(OpenAIModel):
    # "system" is not Anthropic's, but vLLM accepts it (some clients send it): its text
    # joins the top-level system prompt.
    role: Literal["user", "assistant", "system"]
    content: Content

    @field_validator("content", mode="before")
    @classmethod
    def _known_blocks(cls, value: Any) -> Any:
        return refuse_unknown_blocks(value, _BLOCK_TYPES)

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> MessageParam:
        if isinstance(self.content, str):
            return self
        allowed = _ROLE_BLOCKS[self.role]
        for block in self.content:
            if block.type not in allowed:
                raise ValueError(
                    f"{block.type} blocks cannot be in {self.role} messages (they may hold "
                    f"{', '.join(allowed)})."
                )
        return self


# -- tools -------------------------------------------------------------------------------


class ToolParam(OpenAIModel):
    type: Literal["custom"] | None = None
    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: dict[str, Any] | None = None
    strict: bool | None = None  # as vLLM: tool_choice any/tool constrain the output anyway

    @model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(
                f"tools of type {kind!r} are not supported: pagedllm runs no server-side "
                "tools (declare client tools with a name and an input_schema)."
            )
        return data

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type", "object") != "object":
            raise ValueError('input_schema must be a JSON schema of "type": "object".')
        return {"type": "object", **schema}


class ToolChoiceParam(OpenAIModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_with_tool(self) -> ToolChoiceParam:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError('tool_choice.name is given with (and only with) type "tool".')
        return self


# -- requests ----------------------------------------------------------------------------


class MetadataParam(OpenAIModel):
    user_id: str | None = None  # accepted, never logged nor passed on


class ThinkingConfig(OpenAIModel):
    """Accepted as vLLM accepts it: the server's --reasoning-parser decides what is
    returned as thinking blocks, and ``budget_tokens`` is not enforced (``max_tokens``
    bounds thinking and text together)."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(default=None, ge=1)


class JsonOutputFormat(OpenAIModel):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(OpenAIModel):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JsonOutputFormat | None = None


class ConversationFields(OpenAIModel):
    """What both endpoints render into a prompt."""

    model: str
    messages: BoundedList[MessageParam]
    system: SystemContent | None = None
    tools: BoundedList[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingConfig | None = None
    # Declared to be refused: the server cannot reach MCP servers or run containers.
    mcp_servers: BoundedList[dict[str, Any]] | None = None
    container: str | dict[str, Any] | None = None
    # vLLM's extra, as on chat requests
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _text_system(cls, value: Any) -> Any:
        return refuse_unknown_blocks(value, ("text",))

    @model_validator(mode="after")
    def _some_messages(self) -> ConversationFields:
        if not self.messages:
            raise ValueError("messages must hold at least one message.")
        return self

    def refuse_unbuilt(self) -> None:
        if self.mcp_servers:
            raise UnsupportedField("mcp_servers")
        if self.container is not None:
            raise UnsupportedField("container")


class MessagesRequest(ConversationFields):
    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: MetadataParam | None = None
    output_config: OutputConfig | None = None
    service_tier: Literal["auto", "standard_only"] | None = None  # one tier here

    @model_validator(mode="after")
    def _positive_max_tokens(self) -> MessagesRequest:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        return self


class CountTokensRequest(ConversationFields):
    pass


# -- responses ---------------------------------------------------------------------------


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingOut(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessagesUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ThinkingOut | TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessagesUsage


class CountTokensResponse(BaseModel):
    input_tokens: int


class AnthropicErrorInfo(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorInfo
