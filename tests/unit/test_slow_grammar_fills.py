"""Which constrained rows the structured-output manager fails when a step's masks run past
the bound (``manager._fail_slow_fills``), timed in CPU time: fake matchers that burn it."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future

import pytest
import torch

from pagedllm.structured_output import manager
from pagedllm.structured_output.request_grammar import RequestGrammar


class BurningMatcher:
    """Fills its row after ``seconds`` of this thread's CPU time (a sleep would not count:
    the manager times CPU time, which a busy host does not stretch)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fills = 0

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.fills += 1
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass


def grammar(seconds: float) -> RequestGrammar:
    g = RequestGrammar(Future(), None, f"regex:{seconds}")
    g.matcher = BurningMatcher(seconds)
    return g


def test_a_row_past_the_bound_fails_at_its_second_slow_fill(monkeypatch) -> None:
    monkeypatch.setattr(manager, "SLOW_FILL_S", 0.02)
    slow, fast = grammar(0.03), grammar(0.0)
    bitmask = torch.zeros(2, 1, dtype=torch.int32)
    assert manager._fail_slow_fills([slow, fast], [0, 1], bitmask) == []  # one may be a stall
    assert manager._fail_slow_fills([slow, fast], [0, 1], bitmask) == [slow]
    assert "to find which tokens may follow" in slow.error and fast.error is None


def test_rows_under_the_bound_fail_once_their_slow_steps_add_up(monkeypatch) -> None:
    """Many rows each under the bound make steps slow together: none is ever past the
    bound, so each fails once the fills timed on those steps pass the total."""
    monkeypatch.setattr(manager, "SLOW_FILL_S", 0.05)
    monkeypatch.setattr(manager, "SLOW_TOTAL_S", 0.1)
    rows = [grammar(0.03) for _ in range(3)]
    bitmask = torch.zeros(3, 1, dtype=torch.int32)
    results = [manager._fail_slow_fills(rows, [0, 1, 2], bitmask) for _ in range(4)]
    assert results[:3] == [[], [], []] and results[3] == rows
    assert all(g.slow_fills == 0 and g.slow_time > 0.1 for g in rows)
    assert "in steps it slowed (the bound is 0.1 s in all)" in rows[0].error


@pytest.mark.parametrize("seconds", [0.0, 0.005])
def test_rows_well_under_the_bounds_are_left_alone(monkeypatch, seconds: float) -> None:
    monkeypatch.setattr(manager, "SLOW_FILL_S", 0.05)
    rows = [grammar(seconds)]
    for _ in range(10):
        assert manager._fail_slow_fills(rows, [0], torch.zeros(1, 1, dtype=torch.int32)) == []
    assert rows[0].error is None and rows[0].matcher.fills == 10


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_compiles_run_below_the_engine_s_own_threads() -> None:
    """The compile threads' nice value is raised (xgrammar compiles on them); the fill
    threads and the engine's loop keep the process's."""
    outputs = manager.StructuredOutputManager(None, 16, [], pin_memory=False)
    try:
        nice = outputs._executor.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result()
    finally:
        outputs.shutdown()
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert nice == min(own + manager.COMPILE_NICENESS, 19)
