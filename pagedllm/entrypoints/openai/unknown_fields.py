"""Request fields the server does not know: ignored and logged once per name, as vLLM
ignores them (clients send fields from newer API versions, and failing those requests
would break the clients outright).

A field we know but cannot honour is not this case: it stays declared in ``protocol.py``
and refuses the values it cannot serve with a 400.

Names come from clients, so the log is bounded: a name is cut to ``MAX_NAME`` characters
and shown with ``repr`` (no control characters reach the log), and after ``MAX_NAMES``
distinct names no new ones are remembered or logged, so a client sending random names
grows neither memory nor the log.
"""

from __future__ import annotations

import threading
from typing import Any

from pagedllm.logger import init_logger

logger = init_logger(__name__)

MAX_NAMES = 256
MAX_NAME = 64

_seen: set[tuple[str, str]] = set()
_lock = threading.Lock()
_full_noted = False


def unknown_names(data: Any, known: frozenset[str]) -> list[str]:
    """The keys of a JSON object that are not fields of the model (none for non-objects:
    the model's own validation answers those)."""
    if not isinstance(data, dict):
        return []
    return [key for key in data if isinstance(key, str) and key not in known]


def note_unknown_fields(model: str, names: list[str]) -> None:
    """Log each (model, name) the first time it is seen, within the bounds above."""
    global _full_noted
    with _lock:
        for name in names:
            key = (model, name[:MAX_NAME])
            if key in _seen:
                continue
            if len(_seen) >= MAX_NAMES:
                if not _full_noted:
                    _full_noted = True
                    logger.warning(
                        "%d unknown request field names seen; further ones are ignored "
                        "without a log line.", MAX_NAMES,
                    )  # fmt: skip
                return
            _seen.add(key)
            logger.warning(
                "The request field %r of %s is not known to this server: ignored "
                "(logged once).", key[1], model,
            )  # fmt: skip


def note_inert_field(model: str, name: str, why: str) -> None:
    """Log once that a known field has no effect in this request (vLLM accepts it the same
    way), e.g. ``length_penalty`` without beam search."""
    with _lock:
        key = (model, f"inert:{name}")
        if key in _seen:
            return
        _seen.add(key)
    logger.warning("The request field %r of %s has no effect here: %s (logged once).",
                   name, model, why)  # fmt: skip


def forget_unknown_fields() -> None:
    """Reset the once-only memory (tests)."""
    global _full_noted
    with _lock:
        _seen.clear()
        _full_noted = False
