"""Which constrained rows the mask filler fails (``mask_fill.MaskFiller``): rows past the
deadline abandoned while the step goes on, rows past the CPU-time bound failed at their
strikes; fake matchers that burn CPU time, or block until released."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future

import pytest

from pagedllm.core.request import ErrorCause, GrammarError
from pagedllm.structured_output import manager, mask_fill
from pagedllm.structured_output.request_grammar import RequestGrammar

MARK = 7  # what a fake matcher writes into its row


class BurningMatcher:
    """Fills its row after ``seconds`` of this thread's CPU time (a sleep would not count:
    the filler times CPU time, which a busy host does not stretch)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fills = 0
        self.finished = 0

    def fill_next_token_bitmask(self, bitmask, row: int) -> None:
        self.fills += 1
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        bitmask[row].fill_(MARK)
        self.finished += 1


class BlockedMatcher:
    """A fill that runs until released (an ambiguous grammar's, minutes long)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.tid = 0
        self.fills = 0
        self.ended = threading.Event()

    def fill_next_token_bitmask(self, bitmask, row: int) -> None:
        self.fills += 1
        self.tid = threading.get_native_id()
        self.release.wait(30)
        bitmask[row].fill_(MARK + 1)
        self.ended.set()


class FailingMatcher:
    def fill_next_token_bitmask(self, bitmask, row: int) -> None:
        raise RuntimeError("the matcher broke")


def grammar(matcher) -> RequestGrammar:
    g = RequestGrammar(Future(), None, f"regex:{id(matcher)}")
    g.matcher = matcher
    return g


def burning(seconds: float) -> RequestGrammar:
    return grammar(BurningMatcher(seconds))


@pytest.fixture
def filler():
    """One fill thread (the default): rows after a late one are handed to a fresh pool."""
    filler = mask_fill.MaskFiller(vocab_size=64, pin_memory=False)
    yield filler
    filler.shutdown()


def test_a_row_past_the_deadline_is_abandoned_and_the_step_goes_on(filler, monkeypatch) -> None:
    monkeypatch.setattr(mask_fill, "FILL_DEADLINE_S", 0.2)
    blocked, fast = grammar(BlockedMatcher()), burning(0.0)
    began = time.perf_counter()
    bitmask, failed = filler.fill([blocked, None, fast])
    assert time.perf_counter() - began < 2.0
    assert failed == [blocked] and blocked.abandoned
    assert "took longer than 0.2 s to find which tokens may follow" in blocked.error
    assert fast.error is None and not fast.abandoned
    mask = bitmask.bitmask
    assert (mask[0] == -1).all() and (mask[2] == MARK).all()  # every token allowed; filled
    if sys.platform == "linux":  # the late thread now runs at the lowest priority
        assert os.getpriority(os.PRIO_PROCESS, blocked.matcher.tid) == 19
    # The late fill ends later, writing into a buffer that this step's mask is not.
    blocked.matcher.release.set()
    assert blocked.matcher.ended.wait(5)
    assert (mask[0] == -1).all()
    # Next step: the abandoned row is not filled again (its matcher was the thread's), and
    # the request fails on its sampled token without the matcher being asked.
    bitmask, failed = filler.fill([blocked, None, fast])
    assert failed == [] and blocked.matcher.fills == 1 and fast.matcher.fills == 2
    assert (bitmask.bitmask[0] == -1).all()
    with pytest.raises(GrammarError, match="took longer than"):
        blocked.accept_token(0)


def test_rows_queued_behind_late_fills_are_filled_by_fresh_threads(monkeypatch) -> None:
    """Two threads, each held by a late fill: the rows behind them still fill (under the
    bound of abandoned fills, which would fail their first masks)."""
    monkeypatch.setattr(mask_fill, "FILL_DEADLINE_S", 0.2)
    monkeypatch.setattr(mask_fill, "MAX_ABANDONED", 3)
    two = mask_fill.MaskFiller(vocab_size=64, pin_memory=False, threads=2)
    blocked = [grammar(BlockedMatcher()) for _ in range(2)]
    fast = [burning(0.0) for _ in range(4)]
    bitmask, failed = two.fill([blocked[0], *fast[:2], blocked[1], *fast[2:]])
    two.shutdown()
    assert failed == blocked
    assert (bitmask.bitmask[[1, 2, 4, 5]] == MARK).all()
    for g in blocked:
        g.matcher.release.set()


def test_a_fill_s_error_is_raised_once_the_other_fills_end() -> None:
    """Two threads: the other's fill ends before the error is raised (the step is retried
    apart, and no matcher may then still be in use)."""
    two = mask_fill.MaskFiller(vocab_size=64, pin_memory=False, threads=2)
    slow = burning(0.05)
    with pytest.raises(RuntimeError, match="the matcher broke"):
        two.fill([grammar(FailingMatcher()), slow])
    two.shutdown()
    assert slow.matcher.finished == 1


def test_a_row_past_the_bound_fails_at_its_second_slow_fill(filler, monkeypatch) -> None:
    monkeypatch.setattr(mask_fill, "SLOW_FILL_S", 0.02)
    slow, fast = burning(0.03), burning(0.0)
    assert filler.fill([slow, fast])[1] == []  # one may be a stall
    assert filler.fill([slow, fast])[1] == [slow]
    assert "to find which tokens may follow" in slow.error and fast.error is None
    assert slow.matcher.fills == 2  # timed as it filled, not filled again to be timed


def test_rows_under_the_bound_fail_once_their_slow_steps_add_up(monkeypatch) -> None:
    """Many rows each under the bound make steps slow together: none is ever past the
    bound, so each fails once the fills timed on those steps pass the total."""
    monkeypatch.setattr(mask_fill, "SLOW_FILL_S", 0.05)
    monkeypatch.setattr(mask_fill, "SLOW_TOTAL_S", 0.1)
    one_thread = mask_fill.MaskFiller(vocab_size=64, pin_memory=False, threads=1)
    rows = [burning(0.03) for _ in range(3)]
    results = [one_thread.fill(rows)[1] for _ in range(4)]
    one_thread.shutdown()
    assert results[:3] == [[], [], []] and set(results[3]) == set(rows)
    assert all(g.slow_fills == 0 and g.slow_time > 0.1 for g in rows)
    assert "in steps it slowed (the bound is 0.1 s in all)" in rows[0].error


@pytest.mark.parametrize("seconds", [0.0, 0.005])
def test_rows_well_under_the_bounds_are_left_alone(filler, monkeypatch, seconds: float) -> None:
    monkeypatch.setattr(mask_fill, "SLOW_FILL_S", 0.05)
    rows = [burning(seconds)]
    for _ in range(10):
        assert filler.fill(rows)[1] == []
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


def test_the_samples_of_a_constraint_fail_together_within_the_step_s_budget(
    filler, monkeypatch
) -> None:
    """Ten rows of one constraint (n=10), each under the row deadline but 0.1 s of CPU: the
    step no longer waits for all (at least 1 s). Past the budget the row in hand is late, and
    every row of its constraint fails with it, filled or not."""
    monkeypatch.setattr(mask_fill, "FILL_DEADLINE_S", 5.0)
    monkeypatch.setattr(mask_fill, "STEP_BUDGET_S", 0.25)
    monkeypatch.setattr(mask_fill, "LATE_ROW_S", 0.05)
    rows = [burning(0.1) for _ in range(10)]
    for g in rows:
        g.key = "regex:shared"
    began = time.perf_counter()
    _, failed = filler.fill(rows)
    assert time.perf_counter() - began < 0.8
    assert set(failed) == set(rows) and len(failed) == 10
    assert all("had spent their 0.25 s" in g.error for g in rows)
    assert sum(g.matcher.fills for g in rows) <= 4  # the rest never began


def test_past_the_budget_the_costliest_rows_fail_and_the_cheap_ones_fill(
    filler, monkeypatch
) -> None:
    """Rows fill cheapest first by their last fill; past the budget the row in hand is late
    once past ``LATE_ROW_S``, and a row that took longer than that last time fails
    unfilled. (The rows' own deadline is far: only the step's budget acts.)"""
    monkeypatch.setattr(mask_fill, "FILL_DEADLINE_S", 5.0)
    monkeypatch.setattr(mask_fill, "STEP_BUDGET_S", 0.5)
    monkeypatch.setattr(mask_fill, "LATE_ROW_S", 0.04)
    costly = [burning(0.02), grammar(BlockedMatcher()), grammar(BlockedMatcher())]
    for g in costly:
        g.last_fill_s = 0.1
    cheap = [burning(0.0) for _ in range(3)]
    bitmask, failed = filler.fill([*costly, *cheap])
    assert all(g.error is None for g in cheap)
    assert (bitmask.bitmask[3:] == MARK).all()
    assert costly[0].error is None and costly[0].matcher.finished == 1
    assert "took longer than 0.04 s" in costly[1].error and costly[1].matcher.fills == 1
    assert costly[2].matcher.fills == 0 and "had spent their 0.5 s" in costly[2].error
    assert set(failed) == set(costly[1:])
    assert (bitmask.bitmask[1:3] == -1).all()
    for g in costly[1:]:
        g.matcher.release.set()


def test_while_abandoned_fills_run_no_first_mask_begins(filler, monkeypatch) -> None:
    """At ``MAX_ABANDONED`` abandoned fills, a request's first mask fails unfilled as an
    overload (its client's 503), while requests already followed go on; once the late fill
    ends, first masks fill again."""
    monkeypatch.setattr(mask_fill, "FILL_DEADLINE_S", 0.2)
    monkeypatch.setattr(mask_fill, "MAX_ABANDONED", 1)
    blocked, first, going = grammar(BlockedMatcher()), burning(0.0), burning(0.0)
    going.fills = 3
    bitmask, failed = filler.fill([blocked, first, going])
    assert failed == [blocked, first] and filler.saturated
    assert first.error_cause == ErrorCause.OVERLOADED and first.matcher.fills == 0
    assert going.error is None and (bitmask.bitmask[2] == MARK).all()
    with pytest.raises(GrammarError) as raised:
        first.accept_token(0)
    assert raised.value.cause == ErrorCause.OVERLOADED
    blocked.matcher.release.set()
    assert blocked.matcher.ended.wait(5)
    deadline = time.monotonic() + 5
    while filler.saturated and time.monotonic() < deadline:
        time.sleep(0.01)
    later = burning(0.0)
    assert filler.fill([later, going])[1] == [] and later.matcher.fills == 1


def test_while_saturated_only_constraints_followed_cheaply_are_taken(monkeypatch) -> None:
    """The manager refuses a new constraint while the fills are saturated, as an overload,
    but takes one a request has followed cheaply before."""
    from pagedllm.sampling_params import StructuredOutputsParams

    outputs = manager.StructuredOutputManager(None, 16, [], pin_memory=False)
    try:
        known = outputs.request_grammar(StructuredOutputsParams(regex="[ab]+"))
        known.num_accepted = 3
        known.release()
        outputs._filler._abandoned = [Future() for _ in range(mask_fill.MAX_ABANDONED)]
        with pytest.raises(GrammarError, match="retry shortly") as raised:
            outputs.request_grammar(StructuredOutputsParams(regex="[cd]+"))
        assert raised.value.cause == ErrorCause.OVERLOADED
        outputs.request_grammar(StructuredOutputsParams(regex="[ab]+")).release()
    finally:
        outputs.shutdown()


@pytest.mark.parametrize(
    ("cause", "status"),
    [(ErrorCause.INPUT, 400), (ErrorCause.OVERLOADED, 503), (ErrorCause.ENGINE, 500)],
)
def test_a_failed_request_s_cause_decides_its_status(cause: ErrorCause, status: int) -> None:
    """The engine's error cause reaches the client as the status it names."""
    from types import SimpleNamespace

    from pagedllm.engine.async_llm import _failure
    from pagedllm.entrypoints.openai.errors import from_engine_error

    state = SimpleNamespace(error="why", error_cause=cause)
    error = from_engine_error(_failure(state))
    assert error is not None and error.status == status
