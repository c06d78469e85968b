"""Lowering one thread's CPU priority: the grammar threads whose work may wait."""

from __future__ import annotations

import contextlib
import os
import sys

LOWEST = 19  # the highest nice value


def lower_priority(tid: int, by: int) -> None:
    """Raise the nice value of the thread ``tid`` (``threading.get_native_id()``) by ``by``,
    up to ``LOWEST``. Linux keeps a nice value per thread, and threads started from it
    inherit it; elsewhere ``PRIO_PROCESS`` names a process, so nothing is changed."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):  # the thread has ended, or not permitted
        niceness = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(LOWEST, niceness + by))
