"""A run's requests sent from several client processes, for loads one process cannot read
in time.

Why: one Python process reads a few thousand streamed events a second; a saturated server
with 500 streams sends 20,000. A client that falls behind reads several events in one go
and reports near-zero gaps between them and long ones before (benchmarks/RESULTS.md,
"Serving at saturation", 2026-12-02: a median ITL of 0.03 ms against a 25 ms engine step).
The timed requests are dealt round-robin to ``processes`` workers; each runs its own
event loop and HTTP client, sends its requests at their arrival times from one shared
start, and sends back its results; the parent updates the progress bar.

Invariants: every worker times with ``time.perf_counter`` (CLOCK_MONOTONIC on Linux, one
clock for every process of the machine), so results from all workers share one time axis;
``--max-concurrency`` C is split into caps summing to C, so no more than C requests are in
flight at any time (a worker with spare room does not lend it to another).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import queue
import time
from collections.abc import Sequence
from typing import Any

from pagedllm.bench.client import Endpoint, RequestResult
from pagedllm.bench.datasets import SampleRequest

MAX_PROCESSES = 8
# Streams one process reads without falling behind at a saturated server's pace (a step
# every ~25 ms for each stream): the automatic choice gives each process this many.
STREAMS_PER_PROCESS = 64
START_TIMEOUT_S = 120.0  # a worker's start: Python, httpx and this package imported
START_DELAY_S = 0.05  # from "go" to the first send: every worker is waiting by then


def client_processes(requested: int | None, in_flight: int) -> int:
    """``--client-processes`` (checked with the other flags, ``serve._check_counts``), else
    one per STREAMS_PER_PROCESS streams that can be in flight, at most MAX_PROCESSES and the
    CPUs there are (never more than the streams: each process gets one at least)."""
    if requested is not None:
        return requested
    wanted = math.ceil(in_flight / STREAMS_PER_PROCESS)
    return max(1, min(MAX_PROCESSES, os.cpu_count() or 1, wanted))


def split_cap(cap: int | None, parts: int) -> list[int | None]:
    """Per-worker caps that add up to ``cap`` (None: no cap anywhere)."""
    if cap is None:
        return [None] * parts
    return [cap // parts + (i < cap % parts) for i in range(parts)]


def send_from_processes(
    endpoint: Endpoint,
    samples: Sequence[SampleRequest],
    times: Sequence[float],
    max_concurrency: int | None,
    processes: int,
    disable_tqdm: bool,
) -> tuple[list[RequestResult], float]:
    """What ``serve.send_all`` returns (results in sample order, seconds from the start to
    the end of the last request), from ``processes`` worker processes."""
    from tqdm import tqdm

    processes = min(processes, len(samples))
    caps = split_cap(max_concurrency, processes)  # each >= 1: processes <= max_concurrency
    context = multiprocessing.get_context("spawn")  # no inherited event loop or threads
    events = context.Queue()
    go = context.Event()
    start = context.Value("d", 0.0)
    workers = []
    for i in range(processes):  # request j goes to worker j % processes
        share = (list(range(i, len(samples), processes)), list(samples[i::processes]),
                 [float(t) for t in times[i::processes]])  # fmt: skip
        args = (i, *share, endpoint, caps[i], start, go, events)
        workers.append(context.Process(target=_worker_main, args=args, daemon=True))
    for worker in workers:
        worker.start()
    bar = tqdm(total=len(samples), disable=disable_tqdm)
    try:
        _await_ready(events, workers)
        start.value = time.perf_counter() + START_DELAY_S
        go.set()
        results = _collect(events, workers, len(samples), bar)
    finally:
        bar.close()
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=5)
    end = max(r.start + r.latency for r in results)
    return results, end - start.value


def _await_ready(events: Any, workers: list[Any]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    ready = 0
    while ready < len(workers):
        kind, payload = _next_event(events, workers, deadline)
        if kind != "ready":
            raise RuntimeError(f"a client process failed to start: {payload}")
        ready += 1


def _collect(events: Any, workers: list[Any], total: int, bar: Any) -> list[RequestResult]:
    results: list[RequestResult | None] = [None] * total
    finished = 0
    while finished < len(workers):
        kind, payload = _next_event(events, workers, None)
        if kind == "done":
            bar.update(1)
        elif kind == "results":
            for index, result in payload:
                results[index] = result
            finished += 1
        else:
            raise RuntimeError(f"a client process failed: {payload}")
    assert all(r is not None for r in results), "a worker returned too few results"
    return [r for r in results if r is not None]


def _next_event(events: Any, workers: list[Any], deadline: float | None) -> tuple[str, Any]:
    """The next message from a worker; an error if one died without a word or time ran out."""
    while True:
        try:
            return events.get(timeout=1.0)
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client process exited with code {dead[0]}") from None
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(
                    f"the client processes did not start within {START_TIMEOUT_S:.0f} s"
                ) from None


def _worker_main(
    worker: int,
    indices: list[int],
    samples: list[SampleRequest],
    times: list[float],
    endpoint: Endpoint,
    cap: int | None,
    start: Any,
    go: Any,
    events: Any,
) -> None:
    """One client process: its share of the requests, sent on the shared clock."""
    try:
        from pagedllm.bench import client  # imported before "ready": not on the clock

        events.put(("ready", worker))
        go.wait()
        share = _send_share(client, endpoint, samples, times, cap, start.value, events)
        results = asyncio.run(share)
        events.put(("results", list(zip(indices, results))))
    except BaseException as exc:  # reported, or the parent would only see an exit code
        events.put(("error", f"client process {worker}: {type(exc).__name__}: {exc}"))
        raise


async def _send_share(
    client: Any,
    endpoint: Endpoint,
    samples: list[SampleRequest],
    times: list[float],
    cap: int | None,
    start: float,
    events: Any,
) -> list[RequestResult]:
    gate = asyncio.Semaphore(cap) if cap else None

    async def one(http: Any, sample: SampleRequest) -> RequestResult:
        if gate is None:
            result = await client.send(http, endpoint, sample)
        else:
            async with gate:
                result = await client.send(http, endpoint, sample)
        events.put(("done", None))
        return result

    async with client.make_client(cap) as http:
        tasks = []
        for sample, at in zip(samples, times):
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(http, sample)))
        return list(await asyncio.gather(*tasks))
