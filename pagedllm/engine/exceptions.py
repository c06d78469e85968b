"""What the engine raises to its callers (re-exported by ``async_llm``, vLLM's place)."""

from __future__ import annotations


class EngineDeadError(RuntimeError):
    """The engine has stopped (shut down, or its process or loop died)."""


class EngineOverloadedError(RuntimeError):
    """More requests are waiting than the engine accepts (``max_waiting_requests``)."""


class RequestFailedError(RuntimeError):
    """The engine failed this request (and only it): the message is its own."""
