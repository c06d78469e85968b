"""Start-up problems, collected so that one start reports them all.

A user who copies a command line with three options pagedllm cannot honour should learn of
all three at once, each with its fix, not one per restart of a 30-second start. Checks run
in order and each failure is kept; ``raise_if_any`` ends the start with every message.
Checks that depend on an earlier one (the KV budget needs the model's config) are skipped
when it failed, so nothing is reported twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class StartupProblems:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        self.messages.extend(messages)

    def attempt(self, check: Callable[[], T]) -> T | None:
        """``check()``, or None with its ValueError's message kept."""
        try:
            return check()
        except ValueError as exc:
            self.add(str(exc))
            return None

    def raise_if_any(self) -> None:
        if len(self.messages) == 1:
            raise ValueError(self.messages[0])
        if self.messages:
            listed = "\n".join(f"  - {m}" for m in self.messages)
            raise ValueError(f"{len(self.messages)} problems with the arguments:\n{listed}")
