"""What the engine raises to its callers (re-exported by ``async_llm``, vLLM's place)."""

from __future__ import annotations

import signal


class EngineDeadError(RuntimeError):
    """The engine has stopped (shut down, or its process or loop died)."""


def describe_exit(code: int | None) -> str:
    """An engine process's exit status in words: a SIGKILL nobody here sent is most often
    the kernel's out-of-memory killer, which leaves nothing in the process's own log."""
    if code is None or code >= 0:
        return f"exited (code {code})"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return (
            f"was killed by {name}, most often the kernel's out-of-memory killer (the "
            "kernel log, dmesg, tells); the process logs nothing then"
        )
    return f"was ended by {name}"


class EngineOverloadedError(RuntimeError):
    """More requests are waiting than the engine accepts (``max_waiting_requests``)."""


class RequestFailedError(RuntimeError):
    """The engine failed this request (and only it): the message is its own."""


class RequestInputError(RequestFailedError, ValueError):
    """The engine failed this request for what the request itself asked (a structured
    output whose grammar took too long to follow, or whose mask allowed no token): the
    server answers 400, not 500."""
