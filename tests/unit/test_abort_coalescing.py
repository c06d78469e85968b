"""The front end's engine thread sends a run of aborts to the engine as one: a client that
hung up on 128 prompts ends 128 streams at once, and the engine process reads one message."""

from __future__ import annotations

import queue

from pagedllm.engine.async_llm import AsyncLLM


class RecordingEngine:
    def __init__(self) -> None:
        self.aborts: list[list[str]] = []
        self.calls: list[str] = []

    def abort_with_outputs(self, request_ids: list[str]) -> list:
        self.aborts.append(list(request_ids))
        return []


def drained(commands: list[tuple]) -> RecordingEngine:
    front = AsyncLLM.__new__(AsyncLLM)  # only the engine thread's inbox is exercised
    front._inbox = queue.Queue()
    front.engine = RecordingEngine()
    for command in commands:
        front._inbox.put(command)
    front._drain_inbox()
    return front.engine


def test_a_run_of_aborts_reaches_the_engine_as_one() -> None:
    engine = drained([("abort", [f"r{i}"], False) for i in range(128)])
    assert engine.aborts == [[f"r{i}" for i in range(128)]]


def test_aborts_keep_their_order_around_other_commands() -> None:
    """A call between aborts splits them (it may depend on the first ones), and aborts that
    notify their streams go apart from those that do not."""
    record: list[str] = []

    def call(engine: RecordingEngine) -> None:
        record.append(f"call after {len(engine.aborts)} aborts")

    from concurrent.futures import Future

    engine = drained([
        ("abort", ["a"], False), ("abort", ["b"], False), ("call", call, Future()),
        ("abort", ["c"], False), ("abort", ["d", "e"], True), ("abort", ["f"], True),
    ])  # fmt: skip
    assert record == ["call after 1 aborts"]
    assert engine.aborts == [["a", "b"], ["c"], ["d", "e", "f"]]
