"""JSON the model wrote (a tool call), read strictly: what the parsers send on must be JSON.

Python's ``json`` module takes ``NaN``, ``Infinity`` and ``-Infinity``, and reads a number
too large for a float (``1e999999``) as ``inf``; written out again they come back as
``NaN`` / ``Infinity``, which are not JSON, so a client's ``JSON.parse`` of the call's
arguments fails. Here such text is malformed (a ValueError), as ``{not json}`` is: the
parsers then leave the model's text as content. Nesting the decoder cannot follow is a
ValueError too, never a RecursionError.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pagedllm import json_nesting


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]}... is out of a float's range")
    return value


_STRICT = {"parse_constant": _no_constant, "parse_float": _finite_float}
_DECODER = json.JSONDecoder(**_STRICT)


def loads(text: str, what: str = "a tool call") -> Any:
    """The JSON value that is all of ``text``; ValueError when it is not strictly JSON or
    nests past ``json_nesting.MAX_JSON_DEPTH``."""
    return json_nesting.loads(text, what, **_STRICT)


def raw_decode(text: str, pos: int = 0) -> tuple[Any, int]:
    """(value, end) of the JSON value starting at ``text[pos]`` (text may follow it);
    ValueError when there is none, it is not strictly JSON, or it nests too deep to read
    (``json.JSONDecodeError`` when it is merely incomplete or malformed)."""
    try:
        return _DECODER.raw_decode(text, pos)
    except RecursionError:
        raise ValueError("a tool call nests too deep to read") from None
