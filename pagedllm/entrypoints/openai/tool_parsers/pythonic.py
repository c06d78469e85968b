"""Pythonic tool calls (Llama 3.2, Llama 4, ToolACE): the whole output is a Python list of
calls with keyword arguments, e.g.
``[get_weather(city="Paris", unit="celsius"), search(query="x", filters={"year": [2024]})]``.

Rules (vLLM's ``pythonic``, with the differences marked *):
- The output holds calls only if, past leading whitespace (* vLLM: none allowed), it starts
  with ``[``; otherwise it is all content.
- It is then parsed with ``ast`` (never evaluated) and must be exactly one list of one or
  more calls; (*) anything after the list but whitespace and comments makes it content.
- A call's function is a name or a dotted name (``a.b.c``, kept as written). Its arguments
  are keywords only (* vLLM drops positional ones silently; here they make it content).
- Argument values are literals: strings, numbers (* with a sign: vLLM refuses ``-1``),
  ``True`` / ``False`` / ``None`` and their JSON spellings ``true`` / ``false`` / ``null``,
  lists, (*) tuples (as lists), and dicts with literal scalar keys. Anything else (a name,
  a call, an operator, a set, bytes, a complex number, ``**kwargs``, a repeated keyword)
  makes it content.
- The arguments are sent as a JSON object's text, non-ASCII kept as is. (*) NaN or infinite
  numbers (``1e999``) make it content, since that text must be valid JSON.
- Anything that does not parse leaves the whole output as content, nesting too deep for the
  parser included (it raises SyntaxError, MemoryError or RecursionError for that).
- When there are calls, the content is None.

Streaming: ``start_gated.StartGatedStream``: content passes through unless
the output starts with ``[``; a call output is held and extracted whole at ``finish``.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.start_gated import StartGatedParser
from pagedllm.entrypoints.openai.tool_parsers.tool_parser import (
    ToolCall,
)

_STARTS = ("[",)
_JSON_NAMES = {"null": None, "true": True, "false": False}
# Exactly these types: bool is an int, but bytes, complex and Ellipsis have no JSON form.
_SCALARS = (str, int, float, bool, type(None))


class NotACall(ValueError):
    """The syntax tree is not a list of calls with literal arguments."""


def _dotted_name(node: ast.expr) -> str:
    """``f`` or ``a.b.f`` as written; NotACall for any other callee (``f()()``, ``a[0]``)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise NotACall("the callee is not a (dotted) name")
    parts.append(node.id)
    return ".".join(reversed(parts))


def _signed_number(node: ast.UnaryOp) -> int | float:
    """``-1`` / ``+2.5``: a sign on a number literal (what literal_eval allows too)."""
    operand = node.operand
    if not (
        isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(operand, ast.Constant)
        and type(operand.value) in (int, float)
    ):
        raise NotACall("only a number may carry a sign")
    return -operand.value if isinstance(node.op, ast.USub) else operand.value


def _literal(node: ast.expr) -> Any:
    """A value node as the Python value of its JSON form; NotACall when it is not a literal."""
    if isinstance(node, ast.Constant) and type(node.value) in _SCALARS:
        return node.value
    if isinstance(node, ast.UnaryOp):
        return _signed_number(node)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return _dict(node)
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise NotACall(f"not a literal: {type(node).__name__}")


def _dict(node: ast.Dict) -> dict[Any, Any]:
    out = {}
    for key, value in zip(node.keys, node.values):
        # key None is ``**other``; JSON keys are strings, so only scalars can become one.
        if not (isinstance(key, ast.Constant) and type(key.value) in _SCALARS):
            raise NotACall("dict keys must be literal scalars")
        out[key.value] = _literal(value)
    return out


def _call(node: ast.expr) -> ToolCall:
    if not isinstance(node, ast.Call):
        raise NotACall("a list item is not a call")
    if node.args:
        raise NotACall("positional arguments have no parameter name")
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise NotACall("**kwargs")
        if keyword.arg in arguments:  # ast.parse lets it by; Python's compiler would not
            raise NotACall(f"repeated argument {keyword.arg!r}")
        arguments[keyword.arg] = _literal(keyword.value)
    # allow_nan=False: the client gets JSON text, and NaN / Infinity are not JSON.
    return ToolCall(
        _dotted_name(node.func), json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    )


def parse_calls(text: str) -> list[ToolCall]:
    """The calls of a whole output that is one Python list of calls; none otherwise."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
        if not isinstance(tree.body, ast.List):
            return []
        return [_call(item) for item in tree.body.elts]
    # SyntaxError, MemoryError (the parser's stack), RecursionError: deep nesting in
    # untrusted output. ValueError: NotACall, NaN for JSON, null bytes, huge integers.
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return []


class PythonicToolParser(StartGatedParser):
    starts = _STARTS

    @staticmethod
    def parse_calls(text: str) -> list[ToolCall]:
        return parse_calls(text)
