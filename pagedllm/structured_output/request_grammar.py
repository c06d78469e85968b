"""One request's grammar: compiled in the background, then matched token by token."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pagedllm.core.request import GrammarError


class RequestGrammar:
    """What the scheduler asks of a constrained request (``core.request.OutputGrammar``).

    Invariant: once ``matcher`` is set it has accepted exactly the request's output tokens,
    so its bitmask is the set of tokens that may come next.
    """

    def __init__(
        self,
        compiled: Future[Any],
        on_release: Callable[[Future[Any]], None] | None = None,
        key: str = "",
    ) -> None:
        self.key = key  # the constraint's (``spec.constraint_key``)
        self._compiled = compiled
        self._on_release = on_release
        self.matcher: Any = None  # xgrammar.GrammarMatcher once compiled
        self.error: str | None = None
        self.num_accepted = 0
        self.slow_fills = 0  # masks that took longer than ``mask_fill.SLOW_FILL_S``
        self.slow_time = 0.0  # seconds of its masks timed on slow steps, in all
        # A fill of its mask ran past the deadline and was left running on its thread: the
        # matcher is that thread's until it ends, and nothing here may touch it again.
        self.abandoned = False

    def abandon(self, error: str) -> None:
        """Its mask's fill is left to finish on its own; the request fails with ``error``."""
        self.abandoned = True
        self.error = error

    def release(self) -> None:
        """The request is done with its grammar (finished or aborted); called once."""
        if self._on_release is not None:
            self._on_release(self._compiled)
            self._on_release = None

    def is_ready(self) -> bool:
        """Compiled (or failed, with ``error`` set): the request may be scheduled."""
        if self.matcher is not None or self.error is not None:
            return True
        if not self._compiled.done():
            return False
        exc = self._compiled.exception()
        if exc is not None:
            self.error = f"The grammar failed to compile: {exc}"
            return True
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(self._compiled.result())
        return True

    def accept_token(self, token_id: int) -> bool:
        if self.abandoned:
            raise GrammarError(self.error)
        accepted = bool(self.matcher.accept_token(token_id))
        self.num_accepted += accepted
        return accepted

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())
