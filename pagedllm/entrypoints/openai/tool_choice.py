"""What a chat request's ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` mean here.

- ``none``: the model answers in text (the template still sees the tools, as in vLLM).
- ``auto``: the model may call tools in its own format, found by ``--tool-call-parser``
  (needs ``--enable-auto-tool-choice``).
- ``required``: the output is constrained (structured outputs) to a JSON array of
  ``{"name": ..., "parameters": {...}}``, one or more calls to the given tools.
- a named function: the output is constrained to that function's parameters schema.

The constrained modes always parse; the arguments validate against the schemas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pagedllm.entrypoints.openai.protocol import FieldError
from pagedllm.entrypoints.openai.tool_parsers import (
    ExtractedToolCalls,
    ToolCall,
    ToolCallDelta,
    ToolDelta,
    ToolParser,
    ToolStream,
    model_json,
)
from pagedllm.sampling_params import StructuredOutputsParams

_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "none" | "auto" | "required" | "named"
    tools: list[dict[str, Any]]  # OpenAI's [{"type": "function", "function": {...}}]
    parallel: bool
    function: str | None = None  # the named function
    parser: type[ToolParser] | None = None  # auto mode

    @property
    def calls_tools(self) -> bool:
        return self.mode != "none"

    @property
    def needs_special_tokens(self) -> bool:
        """The auto parser reads a special token (see ``ToolParser.needs_special_tokens``)."""
        return self.mode == "auto" and self.parser is not None and self.parser.needs_special_tokens

    def structured_outputs(self) -> StructuredOutputsParams | None:
        """The constraint that makes ``required`` and named choices always parse. Compact
        JSON: the arguments are read by a program, and free whitespace lets a small model
        loop on blanks until max_tokens cuts the call."""
        if self.mode == "named":
            return StructuredOutputsParams(
                json=_parameters(self._tool(self.function)), disable_any_whitespace=True
            )
        if self.mode != "required":
            return None
        schema: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": {"anyOf": [_call_schema(t["function"]) for t in self.tools]},
        }
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutputsParams(json=schema, disable_any_whitespace=True)

    def extract(self, text: str) -> ExtractedToolCalls:
        """The message content and calls of a whole output."""
        if self.mode == "named":
            assert self.function is not None
            return ExtractedToolCalls(None, [ToolCall(self.function, text)])
        if self.mode == "required":
            calls = _array_calls(text)
            return (
                ExtractedToolCalls(text, []) if calls is None else ExtractedToolCalls(None, calls)
            )
        if self.mode == "auto":
            assert self.parser is not None
            found = self.parser.extract(text)
            return found if self.parallel else ExtractedToolCalls(found.content, found.calls[:1])
        return ExtractedToolCalls(text, [])

    def stream(self) -> ToolStream | None:
        if self.mode == "named":
            assert self.function is not None
            return _NamedStream(self.function)
        if self.mode == "required":
            return _ArrayStream()
        if self.mode == "auto":
            assert self.parser is not None
            stream = self.parser.stream()
            return stream if self.parallel else _FirstCallOnly(stream)
        return None

    def _tool(self, name: str | None) -> dict[str, Any]:
        return next(t["function"] for t in self.tools if t["function"]["name"] == name)


def plan_tool_choice(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
    auto_parser: type[ToolParser] | None,
) -> ToolChoice:
    """Validate the request's tool fields; ValueError (a 400) with a sentence otherwise.
    ``auto_parser`` is the server's tool-call parser when auto tool choice is enabled."""
    tools = [_check_tool(t) for t in tools or []]
    check_unique_names([t["function"]["name"] for t in tools], "tools.{}.function.name")
    parallel = parallel_tool_calls is not False
    if tool_choice is None:
        tool_choice = "auto" if tools else "none"
    if isinstance(tool_choice, dict):
        name = _named_function(tool_choice)
        if name not in {t["function"]["name"] for t in tools}:
            raise ValueError(f"tool_choice names function {name!r}, which is not in tools.")
        return ToolChoice("named", tools, parallel, function=name)
    if tool_choice == "none":
        return ToolChoice("none", tools, parallel)
    if not tools:
        raise ValueError(f'tool_choice "{tool_choice}" needs tools.')
    if tool_choice == "required":
        return ToolChoice("required", tools, parallel)
    if tool_choice == "auto":
        if auto_parser is None:
            raise ValueError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                "to be set on the server."
            )
        return ToolChoice("auto", tools, parallel, parser=auto_parser)
    raise ValueError(
        f"tool_choice must be 'none', 'auto', 'required' or "
        f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}.'
    )


def check_unique_names(names: list[str], field: str) -> None:
    """A 400 naming the first tool whose name an earlier tool has, as OpenAI's: a call names
    its tool, so which of the two it meant would be a guess. Chat, Responses and Anthropic
    requests all pass here; ``field`` is the path of a tool's name in the request's own API,
    ``{}`` standing for the tool's index. The name is echoed to its first 64 characters: a
    client's name may be megabytes long."""
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            path = field.format(index)
            raise FieldError(
                path, f"{path}: the tool name {name[:64]!r} is already used by "
                f"tools.{first[name]}; tool names must be unique.",
            )  # fmt: skip
        first[name] = index


def _check_tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise ValueError('Each tool must be {"type": "function", "function": {...}}.')
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError("Each tool's function needs a name.")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise ValueError(f"Tool {function['name']!r}: parameters must be a JSON schema object.")
    return {**tool, "type": "function"}


def _named_function(choice: dict[str, Any]) -> str:
    function = choice.get("function")
    if choice.get("type") != "function" or not isinstance(function, dict):
        raise ValueError('A named tool_choice is {"type": "function", "function": {"name": ...}}.')
    name = function.get("name")
    if not isinstance(name, str):
        raise ValueError("A named tool_choice needs function.name.")
    return name


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    return function.get("parameters") or _EMPTY_PARAMETERS


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [function["name"]]},
            "parameters": _parameters(function),
        },
        "required": ["name", "parameters"],
    }


def _call_of(item: Any) -> ToolCall | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    return ToolCall(item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False))


def _array_calls(text: str) -> list[ToolCall] | None:
    try:  # the model's text: nesting past the bound, NaN or 1e999999 is not a call either
        items = model_json.loads(text, "tool calls")
    except ValueError:
        return None
    if not isinstance(items, list):
        return None
    calls = [_call_of(item) for item in items]
    return None if any(c is None for c in calls) else calls  # type: ignore[return-value]


class _NamedStream(ToolStream):
    """The whole output is the named function's arguments: stream them as they come."""

    def __init__(self, name: str) -> None:
        self._call: ToolCall | None = None
        self._name = name

    def feed(self, text: str) -> ToolDelta:
        if not text:
            return ToolDelta()
        if self._call is None:
            self._call = ToolCall(self._name, text)
            return ToolDelta(calls=[self._call.as_delta(0)])
        return ToolDelta(calls=[ToolCallDelta(0, text)])

    def finish(self) -> ToolDelta:
        if self._call is None:  # nothing generated: still one call, with empty arguments
            self._call = ToolCall(self._name, "")
            return ToolDelta(calls=[self._call.as_delta(0)])
        return ToolDelta()


class _ArrayStream(ToolStream):
    """``[{"name": ..., "parameters": ...}, ...]``: each call is sent once its object closes."""

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0
        self._index = 0
        self._broken = False  # an object that is whole but not strictly JSON: no more calls

    def feed(self, text: str) -> ToolDelta:
        self._text += text
        out = ToolDelta()
        while not self._broken:
            while self._pos < len(self._text) and self._text[self._pos] in " \t\r\n[,":
                self._pos += 1
            if self._pos >= len(self._text) or self._text[self._pos] == "]":
                return out
            try:
                item, end = model_json.raw_decode(self._text, self._pos)
            except json.JSONDecodeError:
                return out  # the object is not complete yet
            except ValueError:  # NaN, 1e999999: its end is unknown, so no call after it
                self._broken = True
                return out
            call = _call_of(item)
            self._pos = end
            if call is not None:
                out.calls.append(call.as_delta(self._index))
                self._index += 1
        return out

    def finish(self) -> ToolDelta:
        if self._index == 0 and self._text.strip():
            return ToolDelta(content=self._text)  # not an array of calls (e.g. cut short)
        return ToolDelta()


class _FirstCallOnly(ToolStream):
    """``parallel_tool_calls: false``: calls after the first are dropped."""

    def __init__(self, inner: ToolStream) -> None:
        self._inner = inner

    def feed(self, text: str) -> ToolDelta:
        return self._only_first(self._inner.feed(text))

    def finish(self) -> ToolDelta:
        return self._only_first(self._inner.finish())

    @staticmethod
    def _only_first(delta: ToolDelta) -> ToolDelta:
        delta.calls = [c for c in delta.calls if c.index == 0]
        return delta
