"""One request's grammar: compiled in the background, then matched token by token."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pagedllm.core.request import ErrorCause, GrammarError


class RequestGrammar:
    """What the scheduler asks of a constrained request (``core.request.OutputGrammar``).

    Invariant: once ``matcher`` is set it has accepted exactly the request's output tokens,
    so its bitmask is the set of tokens that may come next.
    """

    def __init__(
        self,
        compiled: Future[Any],
        on_release: Callable[[RequestGrammar], None] | None = None,
        key: str = "",
    ) -> None:
        self.key = key  # the constraint's (``spec.constraint_key``)
        self.compiled = compiled
        self._on_release = on_release
        self.matcher: Any = None  # xgrammar.GrammarMatcher once compiled
        self.error: str | None = None
        self.error_cause = ErrorCause.INPUT  # with ``error``
        self.num_accepted = 0
        self.fills = 0  # masks filled in full
        self.last_fill_s = 0.0  # the last one's time (``mask_fill``'s measure)
        self.slow_fills = 0  # masks that took longer than ``mask_fill.SLOW_FILL_S``
        self.slow_time = 0.0  # seconds of its masks timed on slow steps, in all
        # A fill of its mask ran past the deadline and was left running on its thread: the
        # matcher is that thread's until it ends, and nothing here may touch it again.
        self.abandoned = False

    def abandon(self, error: str, cause: ErrorCause = ErrorCause.INPUT) -> None:
        """Its mask's fill is left to finish on its own (or never begun); the request fails
        with ``error``, and its matcher is not touched again."""
        self.abandoned = True
        self.error = error
        self.error_cause = cause

    @property
    def followed_cheaply(self) -> bool:
        """Its masks all came fast, over at least one accepted token: evidence that its
        constraint is cheap to follow (the manager admits it while fills are saturated)."""
        return self.error is None and self.num_accepted > 0 and self.slow_fills == 0

    def release(self) -> None:
        """The request is done with its grammar (finished or aborted); called once."""
        if self._on_release is not None:
            self._on_release(self)
            self._on_release = None

    def is_ready(self) -> bool:
        """Compiled (or failed, with ``error`` set): the request may be scheduled."""
        if self.matcher is not None or self.error is not None:
            return True
        if not self.compiled.done():
            return False
        exc = self.compiled.exception()
        if exc is not None:
            self.error = f"The grammar failed to compile: {exc}"
            return True
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(self.compiled.result())
        return True

    def accept_token(self, token_id: int) -> bool:
        if self.abandoned:
            raise GrammarError(self.error or "", self.error_cause)
        accepted = bool(self.matcher.accept_token(token_id))
        self.num_accepted += accepted
        return accepted

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())
