"""Each step's token bitmask, filled row by row on a fill thread, each row under a deadline.

Every request's step waits for the constrained rows' masks. A JSON schema's mask takes
microseconds; an ambiguous grammar's grows with its output (``([a-z]*)*`` repeated, or a
chain of 3,000 alternatives ``r_i ::= r_{i+1} | r_{i+1} "x"``: 26 s for one mask after a few
tokens), and nothing in xgrammar stops a fill once begun. So the rows fill in order on a
pool's thread (xgrammar releases the GIL while it fills) and the step waits at most
``FILL_DEADLINE_S`` for a row's own fill: past it the row is abandoned. Its request fails
(``RequestGrammar.abandon``: its matcher, still the thread's, is never touched again), every
token is allowed in its row (what it samples is dropped with it), and the thread finishes its
fill on its own at the lowest CPU priority, writing into a buffer no later step uses. The
rows after it, and later steps, go to a fresh pool.

The step's rows together have a budget too (``STEP_BUDGET_S``): many rows each under the
deadline (8 requests of n=4 at 0.37 s a row) would otherwise hold a step for seconds. Rows
fill cheapest first (by their last fill), and past the budget a row may take only
``LATE_ROW_S``: the costliest fail first. A row whose last fill took longer than that, or
whose constraint has just failed another row (the samples of ``n`` share one), fails
unfilled. A step's fills thus end within about the budget plus ``LATE_ROW_S`` for each
constraint not yet seen to be costly.

An abandoned fill keeps a CPU busy until it ends (minutes, for a long ambiguous grammar).
While ``MAX_ABANDONED`` of them run, no new constraint begins (``saturated``): a row whose
request has not filled a mask yet fails unfilled as an overload (a 503, its client may
retry), and the manager refuses new requests with constraints not seen followed cheaply
before. So abandoned fills stay near that bound, and with them the CPU they take from
every request's steps.

Under the deadline, each row's fill is timed in its thread's CPU time (a busy host stretches
the wall clock, not that). On a step whose fills took longer than ``SLOW_FILL_S``, a row past
that bound counts a strike, and a request with ``SLOW_STRIKES`` fails; rows each under the
bound but many together add their times, and one that has spent ``SLOW_TOTAL_S`` of such
fills fails too. So one client's constraint costs the others' steps at most a few times the
bound.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch

from pagedllm.core.request import ErrorCause
from pagedllm.sample.grammar_mask import GrammarBitmask
from pagedllm.structured_output.request_grammar import RequestGrammar
from pagedllm.structured_output.thread_priority import LOWEST, lower_priority

# Wall seconds one row's fill may run before its request is failed and the step goes on.
FILL_DEADLINE_S = 0.5
# One request's mask for one token, in seconds of CPU time, at most (a JSON schema's takes
# ~1e-4), and how many fills past it fail the request (one may be a stall).
SLOW_FILL_S = 0.1
SLOW_STRIKES = 2
# One request's fills timed on slow steps, in all: rows each under the bound that make
# steps slow together (n samples of a costly constraint) fail once one has spent this.
SLOW_TOTAL_S = 2.0
# Threads a step's rows are split over. One: a row's fill takes ~1.5 us (xgrammar keeps each
# state's mask), less than Python's own work around it, and threads contend for the GIL
# between rows (256 JSON rows on a 2-core host: 0.9 ms on one thread, 1.8 ms on two, 2.6 ms
# on four; xgrammar's batch matcher 0.4 ms, but a batch cannot be left behind). Only rows
# costly enough to fill in parallel gain from more, and those are the ones bounded here.
FILL_THREADS = 1
# Wall seconds for all of a step's rows together; past it a row may take ``LATE_ROW_S``.
STEP_BUDGET_S = 0.5
LATE_ROW_S = 0.1
# Abandoned fills still running at which no new constraint begins (see the docstring), and
# what a request refused then is told (here for a first mask, by the manager at admission).
MAX_ABANDONED = 2
SATURATED_ERROR = (
    "The server is finishing costly structured-output work of other requests and starts no "
    "new constraint until it has; retry shortly."
)
# How often the step, waiting on its fills, looks for one past the deadline (past the
# budget, more often: each row there may take only ``LATE_ROW_S``).
_POLL_S = 0.02
_LATE_POLL_S = 0.005
# A row's fill shorter than this on the wall clock is charged its wall time (at least its
# CPU time), without reading the CPU clock.
_READ_CPU_PAST_S = 1e-3


class _RowFill:
    """One row to fill; ``cpu_s`` set once filled."""

    __slots__ = ("cpu_s", "grammar", "row")

    def __init__(self, grammar: RequestGrammar, row: int) -> None:
        self.grammar = grammar
        self.row = row
        self.cpu_s = 0.0


class _Chunk:
    """Rows filled in order by one pool thread (one task a thread: a task a row cost ~16 us
    a row, where a JSON row's fill takes ~1.5 us). ``lock`` guards ``next`` and ``stopped``:
    once the chunk is stopped the thread takes no further row, so a row is filled by this thread or
    handed to another chunk, never both. ``started``: when the row in hand began (wall),
    None between rows."""

    __slots__ = ("fills", "lock", "next", "started", "stopped", "tid")

    def __init__(self, fills: list[_RowFill]) -> None:
        self.fills = fills
        self.lock = threading.Lock()
        self.next = 0
        self.started: float | None = None
        self.stopped = False
        self.tid = 0

    def __call__(self, bitmask: torch.Tensor) -> None:
        self.tid = threading.get_native_id()
        fills = self.fills
        # The thread's CPU clock is a system call (~1.3 us, a JSON row's fill ~1.5 us): read
        # only after a row that took long on the wall clock, which is then charged the
        # lesser of its wall time and the CPU time since the last reading (each at least
        # its own CPU time; a busy host stretches only the first).
        cpu = time.thread_time()
        while True:
            with self.lock:
                if self.stopped or self.next == len(fills):
                    return
                fill = fills[self.next]
                self.next += 1
                self.started = began = time.perf_counter()
            fill.grammar.matcher.fill_next_token_bitmask(bitmask, fill.row)
            wall = time.perf_counter() - began
            if wall > _READ_CPU_PAST_S:
                cpu, before = time.thread_time(), cpu
                wall = min(wall, cpu - before)
            fill.cpu_s = wall
            self.started = None

    def late_row(self, now: float, over_budget: bool) -> _RowFill | None:
        """The row in hand, if past its deadline (``FILL_DEADLINE_S``, or past the step's
        budget ``LATE_ROW_S``): the chunk is then stopped."""
        with self.lock:
            started = self.started
            if started is None:
                return None
            ran = now - started
            if ran <= FILL_DEADLINE_S and not (over_budget and ran > LATE_ROW_S):
                return None
            self.stopped = True
            return self.fills[self.next - 1]

    def stop(self) -> list[_RowFill]:
        """Stopped after the row in hand (if any): the rows not taken yet, returned."""
        with self.lock:
            self.stopped = True
            untaken, self.fills = self.fills[self.next :], self.fills[: self.next]
            return untaken


class MaskFiller:
    """Fills the bitmask of each step's constrained rows (see the module's docstring)."""

    def __init__(self, vocab_size: int, pin_memory: bool, threads: int = FILL_THREADS) -> None:
        self.vocab_size = vocab_size
        self._pin_memory = pin_memory
        self._threads = threads
        self._pool = self._new_pool()
        self._bitmask: torch.Tensor | None = None
        self._abandoned: list[Future[None]] = []  # chunks left running a late row

    @property
    def saturated(self) -> bool:
        """``MAX_ABANDONED`` abandoned fills still run: no new constraint begins."""
        self._abandoned = [f for f in self._abandoned if not f.done()]
        return len(self._abandoned) >= MAX_ABANDONED

    def fill(
        self, grammars: list[RequestGrammar | None]
    ) -> tuple[GrammarBitmask | None, list[RequestGrammar]]:
        """The bitmask for a step whose sampled rows have these grammars (None: free), and
        the grammars that failed on this step's fills (``error`` set)."""
        rows = [i for i, g in enumerate(grammars) if g is not None]
        if not rows:
            return None, []
        bitmask = self._buffer(len(grammars))
        fills = []
        for row in rows:
            grammar = grammars[row]
            assert grammar is not None
            if grammar.abandoned:  # a late fill of an earlier step still holds its matcher
                bitmask[row].fill_(-1)
            else:
                fills.append(_RowFill(grammar, row))
        fills.sort(key=lambda fill: fill.grammar.last_fill_s)  # cheapest first
        began = time.perf_counter()
        step = _Step(began + STEP_BUDGET_S, self.saturated)
        self._run(step.triage(fills), bitmask, step)
        failed = [fill.grammar for fill in step.late + step.skipped]
        for fill in step.skipped:
            bitmask[fill.row].fill_(-1)
        if step.late:
            bitmask = self._detach(bitmask, step.late)
        filled = [f for f in fills if not f.grammar.abandoned]  # neither late nor skipped
        for fill in filled:
            fill.grammar.fills += 1
            fill.grammar.last_fill_s = fill.cpu_s
            if fill.grammar.error is None and fill.grammar.key in step.errors:
                # A sibling of a row that ran late (the samples of ``n`` share a constraint).
                fill.grammar.error = step.errors[fill.grammar.key]
                failed.append(fill.grammar)
        if time.perf_counter() - began > SLOW_FILL_S:
            failed += _count_slow([f for f in filled if f.grammar.error is None])
        return GrammarBitmask(bitmask, rows), failed

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, fills: list[_RowFill], bitmask: torch.Tensor, step: _Step) -> None:
        """Every row filled, or abandoned past its deadline, or failed unfilled (``step``
        records which). A fill's own error is raised once no other fill of the step still
        runs (the step is then retried apart, and none may find a matcher still in use)."""
        pending = self._submit(fills, bitmask)
        error: BaseException | None = None
        while pending:
            done, _ = wait(pending, timeout=_LATE_POLL_S if step.over_budget else _POLL_S)
            for future in done:
                pending.pop(future)
                error = error or future.exception()
            now = time.perf_counter()
            crossed = not step.over_budget and now > step.budget_end
            step.over_budget |= crossed
            late = {f: c.late_row(now, step.over_budget) for f, c in pending.items()}
            late = {future: fill for future, fill in late.items() if fill is not None}
            if not late and not crossed:
                continue
            # Every row not taken yet is weighed again (the budget is spent, or a
            # constraint is known costly now), in a fresh pool where a late row holds a
            # thread until it ends (the old pool's threads exit once free).
            untaken = [fill for chunk in pending.values() for fill in chunk.stop()]
            for future, fill in late.items():
                step.abandon(fill)
                lower_priority(pending.pop(future).tid, LOWEST)
                self._abandoned.append(future)
            step.saturated = self.saturated
            rest = step.triage(untaken)
            if late:
                self._pool.shutdown(wait=False)
                self._pool = self._new_pool()
            pending |= self._submit(rest, bitmask)
        if error is not None:
            raise error

    def _submit(self, fills: list[_RowFill], bitmask: torch.Tensor) -> dict[Future[None], _Chunk]:
        """The rows in one chunk a thread, in order."""
        if not fills:
            return {}
        size = -(-len(fills) // self._threads)
        chunks = [_Chunk(fills[i : i + size]) for i in range(0, len(fills), size)]
        return {self._pool.submit(chunk, bitmask): chunk for chunk in chunks}

    def _detach(self, bitmask: torch.Tensor, late: list[_RowFill]) -> torch.Tensor:
        """This step's mask in a fresh buffer, the late rows allowing every token; the old
        buffer is left to the late fills, which still write into it."""
        self._bitmask = None
        fresh = self._buffer(bitmask.shape[0])
        fresh.copy_(bitmask)
        for fill in late:
            fresh[fill.row].fill_(-1)
        return fresh

    def _buffer(self, num_rows: int) -> torch.Tensor:
        """A reused host buffer (pinned for CUDA). Reuse is safe: each step reads its sampled
        tokens back, so the previous step's copy to the device has finished."""
        width = -(-self.vocab_size // 32)
        if self._bitmask is None or self._bitmask.shape[0] < num_rows:
            rows = max(num_rows, 2 * (0 if self._bitmask is None else self._bitmask.shape[0]))
            self._bitmask = torch.empty(
                (rows, width), dtype=torch.int32, pin_memory=self._pin_memory
            )
        return self._bitmask[:num_rows]

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="grammar-fill")


class _Step:
    """One step's fills: its budget's end, and the rows abandoned (``late``) or failed
    unfilled (``skipped``), with the errors of the constraints that failed by key."""

    def __init__(self, budget_end: float, saturated: bool) -> None:
        self.budget_end = budget_end
        self.over_budget = False
        self.saturated = saturated
        self.late: list[_RowFill] = []
        self.skipped: list[_RowFill] = []
        self.errors: dict[str, str] = {}  # constraint key -> the error its rows fail with

    def abandon(self, fill: _RowFill) -> None:
        error = _too_late(fill, self.over_budget)
        fill.grammar.abandon(error)
        self.late.append(fill)
        self.errors.setdefault(fill.grammar.key, error)

    def triage(self, fills: list[_RowFill]) -> list[_RowFill]:
        """The rows to fill; the rest failed unfilled, each marked abandoned (its matcher
        is not touched again): a constraint that failed a row of this step, one whose last
        fill was past ``LATE_ROW_S`` once the budget is spent, and while saturated a
        request's first mask (an overload: its client may retry)."""
        keep = []
        for fill in fills:
            grammar = fill.grammar
            if grammar.key in self.errors:
                grammar.abandon(self.errors[grammar.key])
            elif self.over_budget and grammar.last_fill_s > LATE_ROW_S:
                self.errors[grammar.key] = _too_costly(grammar)
                grammar.abandon(self.errors[grammar.key])
            elif self.saturated and grammar.fills == 0:
                grammar.abandon(SATURATED_ERROR, ErrorCause.OVERLOADED)
            else:
                keep.append(fill)
                continue
            self.skipped.append(fill)
        return keep


def _count_slow(fills: list[_RowFill]) -> list[RequestGrammar]:
    """A slow step's rows: strikes and times added; returns the grammars failed now."""
    failed = []
    for fill in fills:
        grammar = fill.grammar
        grammar.slow_time += fill.cpu_s
        grammar.slow_fills += fill.cpu_s > SLOW_FILL_S
        if grammar.error is None and (
            grammar.slow_fills >= SLOW_STRIKES or grammar.slow_time > SLOW_TOTAL_S
        ):
            grammar.error = _too_slow(grammar, fill.cpu_s)
            failed.append(grammar)
    return failed


def _too_slow(grammar: RequestGrammar, took: float) -> str:
    if grammar.slow_fills >= SLOW_STRIKES:
        cost = (
            f"took {took:.2f} s to find which tokens may follow the {grammar.num_accepted} "
            f"generated so far (the bound is {SLOW_FILL_S} s a token)"
        )
    else:
        cost = (
            f"spent {grammar.slow_time:.2f} s finding allowed tokens in steps it slowed (the "
            f"bound is {SLOW_TOTAL_S} s in all)"
        )
    return _advice(cost)


def _too_late(fill: _RowFill, over_budget: bool) -> str:
    """Past its own deadline, or past ``LATE_ROW_S`` on a step whose budget was spent."""
    took = LATE_ROW_S if over_budget else FILL_DEADLINE_S
    cost = (
        f"took longer than {took} s to find which tokens may follow the "
        f"{fill.grammar.num_accepted} generated so far"
    )
    if over_budget:
        cost += f", on a step whose constraints had spent their {STEP_BUDGET_S} s"
    return _advice(cost)


def _too_costly(grammar: RequestGrammar) -> str:
    cost = (
        f"took {grammar.last_fill_s:.2f} s to find which tokens may follow the "
        f"{grammar.num_accepted} generated so far, on a step whose constraints had spent "
        f"their {STEP_BUDGET_S} s"
    )
    return _advice(cost)


def _advice(cost: str) -> str:
    return (
        f"The structured output's constraint {cost}: its regex or grammar is too ambiguous "
        "(nested repetitions such as (a*)*, or alternatives that all match the same text); "
        "write it without them."
    )
