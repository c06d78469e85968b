"""Server-sent events, encoded fast: at saturation a server sends one event per generated
token for every running request (tens of thousands a second), so each is a plain dict
encoded by msgspec, not a pydantic model dumped and re-encoded."""

from __future__ import annotations

from typing import Any

import msgspec

_ENCODER = msgspec.json.Encoder()  # UTF-8 as is (no \\u escapes), as OpenAI sends it
DONE = b"data: [DONE]\n\n"


def event(body: dict[str, Any]) -> bytes:
    """One ``data:`` event."""
    return b"data: " + _ENCODER.encode(body) + b"\n\n"
