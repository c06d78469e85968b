"""Finding the request that made a step fail, without failing anyone else.

Validation at admission keeps bad input out of the engine; this is the property that holds
when something still gets through. When a step fails, every request scheduled in it becomes
a suspect: the scheduler resets it (its KV is recomputed, its generated tokens kept) and
the suspects are tried in groups, bisecting: while a group is on trial, steps schedule only
its members, synchronously. A member that samples a token in a step that succeeds is
cleared and rejoins everyone else. A trial step that fails splits the members it scheduled
in two halves, each tried on its own; a failed step that scheduled one request alone names
that request, which is failed with its own error. Requests outside the group wait (they
keep their KV) until the group is cleared.

Plain data, no torch: the scheduler owns one, the engine core reports to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class Quarantine:
    def __init__(self) -> None:
        # Groups of request ids; the first is on trial.
        self._groups: deque[list[str]] = deque()

    @property
    def active(self) -> bool:
        return bool(self._groups)

    def on_trial(self) -> set[str] | None:
        """The ids a step may schedule now; None outside a trial (anyone may run)."""
        return set(self._groups[0]) if self._groups else None

    def step_failed(self, scheduled: list[str]) -> str | None:
        """A step that scheduled ``scheduled`` failed. Returns the culprit when the step
        held one request alone; otherwise the requests become suspects, tried in halves
        before anything else."""
        if len(scheduled) == 1:
            self.discard(scheduled)
            return scheduled[0]
        failed = set(scheduled)
        rest = [rid for rid in self._groups[0] if rid not in failed] if self._groups else []
        if self._groups:
            self._groups.popleft()
        half = len(scheduled) // 2
        groups = [scheduled[:half], scheduled[half:], rest]
        for group in reversed(groups):
            if group:
                self._groups.appendleft(group)
        return None

    def cleared(self, request_ids: Iterable[str]) -> None:
        """These members of the group on trial sampled a token in a step that succeeded."""
        if self._groups:
            self._remove(self._groups[0], set(request_ids))

    def discard(self, request_ids: Iterable[str]) -> None:
        """Requests that finished (or were failed): no longer suspects."""
        gone = set(request_ids)
        for group in list(self._groups):
            self._remove(group, gone)

    def _remove(self, group: list[str], gone: set[str]) -> None:
        group[:] = [rid for rid in group if rid not in gone]
        if not group:
            self._groups.remove(group)
