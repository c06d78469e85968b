"""The engine core's loop takes in waiting messages between steps within a time budget, so
a burst of arrivals cannot hold the next step back while the device idles."""

from __future__ import annotations

import time

import zmq

from pagedllm import SamplingParams
from pagedllm.engine import core_proc
from pagedllm.engine.core_proc import EngineCoreLoop
from pagedllm.engine.messages import Codec, EngineCoreRequest


class BusyCore:
    """Requests are running; each added request costs a millisecond."""

    def __init__(self) -> None:
        self.added: list[str] = []

    def has_unfinished_requests(self) -> bool:
        return True

    def try_add_request(self, request: EngineCoreRequest) -> None:
        time.sleep(0.001)
        self.added.append(request.request_id)


def test_a_burst_is_taken_in_across_steps(monkeypatch) -> None:
    context = zmq.Context()
    inbound, sender = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    inbound.bind("inproc://intake")
    sender.connect("inproc://intake")
    codec = Codec()
    params = SamplingParams(max_tokens=4)
    for i in range(40):
        message = EngineCoreRequest(str(i), [1, 2, 3], params, None, 0.0, 0, None)
        sender.send_multipart(codec.encode(message))
    time.sleep(0.2)  # all 40 queued
    core = BusyCore()
    loop = EngineCoreLoop(core, inbound, [])  # type: ignore[arg-type]
    poller = zmq.Poller()
    poller.register(inbound, zmq.POLLIN)
    monkeypatch.setattr(core_proc, "INTAKE_BUDGET_S", 0.005)
    loop._take_in(poller, busy=True)
    first = len(core.added)
    assert 1 <= first <= 10  # ~5 ms of 1 ms requests, not the whole burst
    while len(core.added) < 40:  # the rest over the next passes, in order
        loop._take_in(poller, busy=True)
    assert core.added == [str(i) for i in range(40)]
    for socket in (inbound, sender):
        socket.close(linger=0)
    context.term()
