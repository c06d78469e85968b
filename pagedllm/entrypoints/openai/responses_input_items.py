"""``GET /v1/responses/{id}/input_items``: the input items a stored response was made from.

When a response is created, its request's ``input`` is kept with it as OpenAI's item
objects (``input_item_objects``), each with an id fixed then, so the pages of the list,
which are found by item id (``after``), stay the same from one call to the next.

Which items: OpenAI's reference calls the list the items "used to generate this response"
and says nothing about a response that continues ``previous_response_id``. We list this
request's own ``input`` only: the earlier turns are listed under their own response ids
(their input here, their output by retrieving them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pagedllm.entrypoints.openai.protocol import FieldError
from pagedllm.entrypoints.openai.responses_protocol import (
    INCLUDE_LOGPROBS,
    ContentPart,
    FunctionCallOutputItem,
    InputItem,
    MessageItem,
    RefusedField,
    item_id,
)
from pagedllm.entrypoints.openai.unknown_fields import note_unknown_fields

# The include values the list honours. Logprobs: output_text parts sent back as input keep
# the logprobs they came with, listed only when asked (OpenAI leaves them out otherwise).
# Image urls: every part of a stored message is listed in full, so its image urls would be
# there whether asked or not (and there are none yet: ``create`` refuses image parts).
# The others name results of built-in tools, or encrypted reasoning, which this server
# neither runs nor keeps: asking for them is a 400, never a silently shorter list.
INCLUDE_IMAGE_URLS = "message.input_image.image_url"
LISTED_INCLUDES = (INCLUDE_IMAGE_URLS, INCLUDE_LOGPROBS)

# The query parameters of the route; ``include[]`` is how the openai clients send a list.
KNOWN_PARAMS = frozenset({"after", "include", "include[]", "limit", "order"})
MAX_LIMIT = 100
DEFAULT_LIMIT = 20

# Prefixes of the ids given to items sent without one (``msg_`` as output messages have).
_ID_PREFIXES = {
    "message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
}  # fmt: skip


# -- kept at creation -------------------------------------------------------------------------


def input_item_objects(items: str | Sequence[InputItem]) -> list[dict[str, Any]]:
    """A request's ``input`` as item objects, in order; a string is one user message.

    An item keeps the id it was sent with (an output item sent back keeps its own), unless
    an earlier item of this input has it: ids must be unique for ``after`` to name one."""
    if isinstance(items, str):
        items = [MessageItem(role="user", content=items)]
    taken: set[str] = set()
    return [_item_object(item, taken) for item in items]


def _item_object(item: InputItem, taken: set[str]) -> dict[str, Any]:
    body = item.model_dump(exclude_none=True)
    given = body.pop("id", None)
    if isinstance(item, MessageItem):
        text_kind = "output_text" if item.role == "assistant" else "input_text"
        body["content"] = _parts(item.content, text_kind)
    elif isinstance(item, FunctionCallOutputItem) and not isinstance(item.output, str):
        body["output"] = _parts(item.output, "input_text")
    body.setdefault("status", "completed")
    new_id = given if given is not None and given not in taken else None
    new_id = new_id or item_id(_ID_PREFIXES.get(body["type"], "item"))
    taken.add(new_id)
    return {"id": new_id, **body}


def _parts(content: str | Sequence[ContentPart], text_kind: str) -> list[dict[str, Any]]:
    """Content as a list of parts, a string being one text part of ``text_kind``
    (an assistant's text is output_text, as in the output it came from)."""
    if isinstance(content, str):
        content = [ContentPart(type=text_kind, text=content)]
    return [_part(part) for part in content]


def _part(part: ContentPart) -> dict[str, Any]:
    if part.type == "output_text":  # the shape of an output message's text part
        return {
            "type": "output_text", "text": part.text or "",
            "annotations": part.annotations or [], "logprobs": part.logprobs or [],
        }  # fmt: skip
    return part.model_dump(exclude_none=True)


# -- the query --------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputItemsQuery:
    """A list call's parameters (limit and order are checked by the route's schema)."""

    after: str | None = None
    include: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT
    order: Literal["asc", "desc"] = "desc"


def check_param_names(names: Iterable[str]) -> None:
    """Unknown query parameters are ignored and logged once, as unknown request fields
    are everywhere (and as the other GET routes ignore them). ``before`` is known, from
    older versions of OpenAI's API, but not served: ignoring it would answer another page
    than the one asked for."""
    names = list(dict.fromkeys(names))
    if "before" in names:
        raise RefusedField(
            "before", "The query parameter 'before' is not supported by pagedllm; page "
            "with after (the last id of the page before) and order.",
        )  # fmt: skip
    unknown = [name for name in names if name not in KNOWN_PARAMS]
    if unknown:
        note_unknown_fields("InputItemListParams", unknown)


def requested_includes(values: Iterable[str]) -> tuple[str, ...]:
    """The include values asked for, repeated or comma-separated; a 400 naming ``include``
    and the first value the list cannot honour."""
    wanted = tuple(v.strip() for value in values for v in value.split(",") if v.strip())
    for value in wanted:
        if value not in LISTED_INCLUDES:
            raise RefusedField(
                "include", f"include {value[:80]!r} is not supported by pagedllm for input "
                f"items; use {' or '.join(map(repr, LISTED_INCLUDES))}.",
            )  # fmt: skip
    return wanted


# -- the page ---------------------------------------------------------------------------------


def item_page(items: list[dict[str, Any]], query: InputItemsQuery) -> dict[str, Any]:
    """One page of ``items`` (kept in input order), as OpenAI's list object; ``first_id``
    and ``last_id`` are null on an empty page (an input of no items, or ``after`` the last)."""
    ordered = items if query.order == "asc" else items[::-1]
    start = 0 if query.after is None else _position(ordered, query.after) + 1
    page = ordered[start : start + query.limit]
    with_logprobs = INCLUDE_LOGPROBS in query.include
    data = [item if with_logprobs else _without_logprobs(item) for item in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + len(page) < len(ordered),
    }


def _position(items: list[dict[str, Any]], wanted: str) -> int:
    for index, item in enumerate(items):
        if item["id"] == wanted:
            return index
    raise FieldError("after", f"after: no input item of this response has the id {wanted[:80]!r}.")


def _without_logprobs(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with its output_text parts' logprobs emptied (a copy; the stored item is
    kept whole for a call that includes them)."""
    changed = {}
    for key in ("content", "output"):
        parts = item.get(key)
        if isinstance(parts, list) and any(p.get("logprobs") for p in parts):
            changed[key] = [{**p, "logprobs": []} if p.get("logprobs") else p for p in parts]
    return {**item, **changed} if changed else item
