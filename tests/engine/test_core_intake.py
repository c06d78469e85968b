"""The engine core's loop takes in waiting messages between steps within a time budget, so
a burst of arrivals cannot hold the next step back while the device idles; an abort read
behind a burst drops the burst's adds it names at once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import zmq

from pagedllm import SamplingParams
from pagedllm.engine import core_proc
from pagedllm.engine.core_proc import EngineCoreLoop
from pagedllm.engine.messages import Abort, Codec, EngineCoreRequest
from pagedllm.metrics.stats import EngineSnapshot


class BusyCore:
    """Requests are running; each added request costs a millisecond."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.aborted: list[str] = []

    def has_unfinished_requests(self) -> bool:
        return True

    def try_add_request(self, request: EngineCoreRequest) -> None:
        time.sleep(0.001)
        self.added.append(request.request_id)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.aborted += request_ids

    def snapshot(self) -> EngineSnapshot:
        return EngineSnapshot(num_running=1, num_waiting=2, kv_cache_usage=0.0,
                              prefix_cache_queries=0, prefix_cache_hits=0)  # fmt: skip


@contextlib.contextmanager
def intake(messages: list, monkeypatch) -> Iterator[tuple[BusyCore, Callable[[], None]]]:
    """A busy core, and one pass of its loop's intake, with ``messages`` waiting on the
    inbound socket (a 5 ms budget for handling them)."""
    context = zmq.Context()
    inbound, sender = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    inbound.bind("inproc://intake")
    sender.connect("inproc://intake")
    codec = Codec()
    for message in messages:
        sender.send_multipart(codec.encode(message))
    time.sleep(0.2)  # all queued
    core = BusyCore()
    loop = EngineCoreLoop(core, inbound, [])  # type: ignore[arg-type]
    core.loop = loop  # type: ignore[attr-defined]
    poller = zmq.Poller()
    poller.register(inbound, zmq.POLLIN)
    monkeypatch.setattr(core_proc, "INTAKE_BUDGET_S", 0.005)
    try:
        yield core, lambda: loop._take_in(poller, busy=True)
        assert not loop._backlog
    finally:
        for socket in (inbound, sender):
            socket.close(linger=0)
        context.term()


def add(request_id: str) -> EngineCoreRequest:
    return EngineCoreRequest(
        request_id, [1, 2, 3], SamplingParams(max_tokens=4), None, 0.0, 0, None
    )


def test_a_burst_is_taken_in_across_steps(monkeypatch) -> None:
    with intake([add(str(i)) for i in range(40)], monkeypatch) as (core, take_in):
        take_in()
        assert 1 <= len(core.added) <= 10  # ~5 ms of 1 ms requests, not the whole burst
        while len(core.added) < 40:  # the rest over the next passes, in order
            take_in()
    assert core.added == [str(i) for i in range(40)]


def test_an_abort_behind_a_burst_drops_its_adds_at_once(monkeypatch) -> None:
    """40 adds, an abort of 30 of them (a client that hung up), then an add reusing one of
    the aborted ids: after the first pass none of the 30 is ever added, the core is told
    of the abort, and the later add under a reused id is kept."""
    aborted = [str(i) for i in range(10, 40)]
    messages = [add(str(i)) for i in range(40)] + [Abort(aborted), add("15")]
    with intake(messages, monkeypatch) as (core, take_in):
        take_in()
        assert core.aborted == aborted  # read, and applied, on the first pass
        assert len(core.added) <= 10
        while len(core.added) < 11:
            take_in()
    assert core.added == [str(i) for i in range(10)] + ["15"]


def test_aborts_behind_hundreds_of_long_adds_are_read_in_the_first_pass(monkeypatch) -> None:
    """450 adds of 8,000 token ids, then an abort for each (clients' prompts, gone; 900
    messages, under ZeroMQ's queue bound of 1,000): reading decodes no add (~0.1 ms each: a
    pass within its budget would read ~200) and applies the aborts together (one at a
    time, each filtering the backlog, ~12 were read a pass), so the first pass reads them
    all and no add is ever handled."""
    ids = [str(i) for i in range(450)]
    long = SamplingParams(max_tokens=1)
    messages = [EngineCoreRequest(i, list(range(8000)), long, None, 0.0, 0, None) for i in ids]
    monkeypatch.setattr(core_proc, "READ_BUDGET_S", 0.02)
    with intake([*messages, *(Abort([i]) for i in ids)], monkeypatch) as (core, take_in):
        take_in()
        assert core.aborted == ids and core.added == []


def test_requests_read_but_not_handled_count_as_waiting(monkeypatch) -> None:
    """/metrics reports the adds the loop holds unread as waiting, beside the scheduler's:
    it showed nothing waiting while 768 sat in the backlog."""
    messages = [add(str(i)) for i in range(40)] + [Abort([str(i) for i in range(30, 40)])]
    with intake(messages, monkeypatch) as (core, take_in):
        take_in()
        held = 30 - len(core.added)  # the abort dropped the last ten
        assert core.loop._backlog_adds == held > 0
        assert core.loop._snapshot().num_waiting == 2 + held
        while core.loop._backlog:
            take_in()
        assert core.loop._backlog_adds == 0
