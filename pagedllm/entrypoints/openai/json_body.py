"""Request bodies parsed as strict JSON, off the event loop when large.

FastAPI reads a route's JSON body through ``Request.json()``; the route class here gives
it a request whose ``json()`` refuses what Python's parser lets through but JSON does not
allow (``NaN``, ``Infinity``) or Unicode cannot encode (a lone surrogate such as
``"\\ud800"``, which fails later when the text is encoded) or nests deeper than
``json_nesting.MAX_JSON_DEPTH`` (code downstream recurses per level) or holds more than
``MAX_JSON_OBJECTS`` objects or ``MAX_JSON_KEYS`` keys (each validated on the loop) or, counted
on the bytes before parsing, ``MAX_JSON_ARRAYS`` arrays or ``MAX_JSON_VALUES`` values, and
parses bodies past a size on a worker thread so a large prompt never stalls the loop. A
refusal is a ``json.JSONDecodeError``: FastAPI answers it with the server's 400 for
malformed JSON.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from pagedllm import json_nesting
from pagedllm.entrypoints.openai.limits import (
    MAX_JSON_ARRAYS,
    MAX_JSON_KEYS,
    MAX_JSON_OBJECTS,
    MAX_JSON_VALUES,
)

# Bodies up to this size are parsed on the loop: a thread hop costs more than the parse.
OFF_LOOP_BYTES = 256 * 1024
# A \uD800-\uDFFF escape: only bodies holding one can carry a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")
# A JSON string (unrolled: one tight run between escapes, so a 64 MB text is one match).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_RECOUNTED_STRINGS = 1 << 19


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _ObjectCounter:
    """``object_hook`` that refuses a body past ``MAX_JSON_OBJECTS`` objects, or past
    ``MAX_JSON_KEYS`` keys in all of them, as it is parsed."""

    def __init__(self) -> None:
        self.objects_left = MAX_JSON_OBJECTS
        self.keys_left = MAX_JSON_KEYS

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        self.objects_left -= 1
        self.keys_left -= len(item)
        if self.objects_left < 0:
            raise ValueError(f"the request body holds more than {MAX_JSON_OBJECTS} JSON objects")
        if self.keys_left < 0:
            raise ValueError(f"the request body's objects hold more than {MAX_JSON_KEYS} keys")
        return item


def _counts(body: bytes) -> tuple[int, int]:
    """(arrays, values) of a JSON text, or more (brackets and commas inside strings count
    too): every value but a container's first follows a comma, and each container opens
    with a bracket."""
    arrays, objects = body.count(b"["), body.count(b"{")
    return arrays, body.count(b",") + 2 * (arrays + objects) + 1


def _check_counts(body: bytes) -> None:
    """ValueError for a body past ``MAX_JSON_ARRAYS`` arrays or ``MAX_JSON_VALUES`` values,
    before the parser builds them. Most bodies cost three ``bytes.count`` passes. Past a
    bound, the strings' own brackets and commas (a long text's) are taken out and the body
    counted again, but only for a body of at most ``_RECOUNTED_STRINGS`` strings: the
    substitution holds a piece per string (12 million short strings took 2 GB), and more
    strings than that with so many separators is no real request."""
    arrays, values = _counts(body)
    if arrays <= MAX_JSON_ARRAYS and values <= MAX_JSON_VALUES:
        return
    strings = (body.count(b'"') - body.count(b'\\"')) // 2  # escaped quotes are inside
    if strings <= _RECOUNTED_STRINGS:
        arrays, values = _counts(_STRING.sub(b'""', body))
    if arrays > MAX_JSON_ARRAYS:
        raise ValueError(f"the request body holds more than {MAX_JSON_ARRAYS} JSON arrays")
    if values > MAX_JSON_VALUES:
        raise ValueError(f"the request body holds more than {MAX_JSON_VALUES} JSON values")


def parse_json(body: bytes) -> Any:
    try:
        _check_counts(body)
        data = json_nesting.loads(
            body, "the request body", parse_constant=_refuse_constant, object_hook=_ObjectCounter()
        )
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(exc), body.decode(errors="replace"), 0) from None
    if _SURROGATE_ESCAPE.search(body):
        path = _lone_surrogate(data, "body")
        if path is not None:
            raise json.JSONDecodeError(
                f"{path} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
                "which is not valid Unicode",
                "",
                0,
            )
    return data


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) that cannot be encoded as UTF-8, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, f"{path} (a key)") or _lone_surrogate(
                item, f"{path}.{key}"
            )
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{i}]")
            if found:
                return found
    return None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > OFF_LOOP_BYTES:
                self._json = await asyncio.to_thread(parse_json, body)
            else:
                self._json = parse_json(body)
        return self._json


class StrictJSONRoute(APIRoute):
    """The route class of the server's app (``app.router.route_class``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
