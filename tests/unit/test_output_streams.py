"""Unread outputs stay bounded: a request's stream merges what its reader has not taken
(``RequestStream``, ``merge_outputs``), and several prompts' streams merged for one
completion request pull from each only as the reader takes items (``merge_streams``)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from pagedllm.engine.async_llm import MAX_UNREAD_OUTPUTS, RequestStream, merge_outputs
from pagedllm.engine.exceptions import RequestFailedError
from pagedllm.entrypoints.openai.streams import merge_streams
from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import RequestOutputKind


def output(*completions: CompletionOutput, finished: bool = False) -> RequestOutput:
    return RequestOutput("r", None, [1, 2], None, list(completions), finished)


def sample(index: int, text: str, ids: list[int], finish: str | None = None) -> CompletionOutput:
    logprobs = [{i: Logprob(-1.0)} for i in ids]
    return CompletionOutput(index, text, ids, -float(len(ids)), logprobs, finish)


def test_delta_outputs_append_per_sample_in_first_seen_order():
    pending, texts = output(sample(1, "a", [5])), {}
    merge_outputs(pending, output(sample(0, "x", [9])), RequestOutputKind.DELTA, texts)
    merge_outputs(pending, output(sample(1, "bc", [6, 7], "stop")), RequestOutputKind.DELTA,
                  texts)  # fmt: skip
    merge_outputs(pending, output(sample(0, "y", [8], "length"), finished=True),
                  RequestOutputKind.DELTA, texts)  # fmt: skip
    assert [c.index for c in pending.outputs] == [1, 0] and pending.finished
    one, zero = pending.outputs
    assert ("".join(texts[1]), one.token_ids, one.finish_reason) == ("abc", [5, 6, 7], "stop")
    assert ("".join(texts[0]), zero.token_ids, zero.finish_reason) == ("xy", [9, 8], "length")
    assert [list(lp) for lp in one.logprobs] == [[5], [6], [7]]
    assert one.cumulative_logprob == -2.0  # the newest, not a sum


def test_cumulative_outputs_keep_each_samples_newest():
    pending = output(sample(0, "a", [5]), sample(1, "x", [9]))
    merge_outputs(pending, output(sample(0, "ab", [5, 6])), RequestOutputKind.CUMULATIVE, {})
    assert [c.token_ids for c in pending.outputs] == [[5, 6], [9]]


def test_a_merge_costs_its_own_step_not_the_stream_so_far():
    """1,000 one-token steps merged into a stalled stream cost the same after 1,000 merged
    steps as after 100,000 (the first version copied the whole text, ids and logprobs at
    every step: 18 s for 80,000, ~100x here). Each figure is the best of three with the
    collector paused: its passes grow with the live objects, not with the merge."""

    def cost_after(merged: int) -> float:
        async def go() -> float:
            stream = RequestStream(asyncio.get_running_loop(), RequestOutputKind.DELTA)
            for i in range(MAX_UNREAD_OUTPUTS + merged):
                stream.put(output(sample(0, "t", [i])))
            start = time.perf_counter()
            for i in range(1000):
                stream.put(output(sample(0, "t", [i])))
            return time.perf_counter() - start

        return asyncio.run(go())

    gc.disable()
    try:
        early = min(cost_after(1000) for _ in range(3))
        late = min(cost_after(100_000) for _ in range(3))
    finally:
        gc.enable()
    assert late < 10 * early


def test_merges_extend_the_pending_output_in_place_and_join_its_text_once_read():
    async def go() -> tuple[bool, str, RequestOutput]:
        stream = RequestStream(asyncio.get_running_loop(), RequestOutputKind.DELTA)
        for i in range(MAX_UNREAD_OUTPUTS):
            stream.put(output(sample(0, "t", [i])))
        last = stream._outputs[-1].outputs[0]
        ids, logprobs = last.token_ids, last.logprobs
        for i in range(3):
            stream.put(output(sample(0, "u", [100 + i])))
        same = stream._outputs[-1].outputs[0].token_ids is ids and last.logprobs is logprobs
        text_before_read = last.text
        items = [await stream.get() for _ in range(MAX_UNREAD_OUTPUTS)]
        return same, text_before_read, items[-1]

    same, text_before_read, read = asyncio.run(go())
    assert same  # extended, not rebuilt
    assert text_before_read == "t"  # pieces kept aside, not concatenated per step
    assert read.outputs[0].text == "tuuu"
    assert read.outputs[0].token_ids == [MAX_UNREAD_OUTPUTS - 1, 100, 101, 102]


def test_a_stream_keeps_its_unread_outputs_bounded_then_its_error():
    async def go():
        stream = RequestStream(asyncio.get_running_loop(), RequestOutputKind.DELTA)
        for i in range(1000):
            stream.put(output(sample(0, "t", [i])))
        stream.put(RequestFailedError("boom"))
        items = [await stream.get() for _ in range(MAX_UNREAD_OUTPUTS + 1)]
        return items

    *outputs, error = asyncio.run(go())
    # The first ones as they came (each its own event), the rest merged into the last.
    assert [o.outputs[0].token_ids for o in outputs[:3]] == [[0], [1], [2]]
    assert outputs[-1].outputs[0].token_ids == list(range(MAX_UNREAD_OUTPUTS - 1, 1000))
    assert isinstance(error, RequestFailedError)


def test_a_stream_waits_for_its_next_output():
    async def go():
        stream = RequestStream(asyncio.get_running_loop(), RequestOutputKind.DELTA)
        stream.put(output(sample(0, "a", [1])))
        await stream.get()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.get(), 0.05)

    asyncio.run(go())


def test_merged_prompts_are_pulled_only_as_the_reader_reads():
    pulled = [0, 0]

    async def produce(i: int):
        for _ in range(100):
            pulled[i] += 1
            yield output(sample(0, "t", [i]))

    async def go():
        merged = merge_streams([produce(0), produce(1)])
        for _ in range(3):
            await merged.__anext__()
        for _ in range(20):
            await asyncio.sleep(0)  # let the producers run as far as they can
        await merged.aclose()

    asyncio.run(go())
    assert sum(pulled) <= 3 + 2 + 2  # read, queued (one per prompt), held by each producer


def closing_producers(count: int, closed: list[int], fail: int | None = None):
    async def produce(i: int):
        try:
            for k in range(1000):
                await asyncio.sleep(0)  # as RequestStream.get: an await point
                if i == fail and k == 2:
                    raise RuntimeError("prompt failed")
                yield output(sample(0, "t", [k]))
        finally:
            closed.append(i)  # AsyncLLM's stream sends its abort here

    return [produce(i) for i in range(count)]


async def others_settle() -> list[asyncio.Task]:
    for _ in range(50):
        await asyncio.sleep(0)
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_a_reader_gone_while_the_queue_is_full_closes_every_prompts_stream():
    """The client leaves while the producers wait to put (the bounded queue full): each
    prompt's stream is closed (its request aborted) and no pump is left waiting."""
    closed: list[int] = []

    async def go():
        merged = merge_streams(closing_producers(3, closed))
        await merged.__anext__()
        for _ in range(20):
            await asyncio.sleep(0)  # the producers fill the queue
        await merged.aclose()
        return await others_settle()

    assert asyncio.run(go()) == [] and sorted(closed) == [0, 1, 2]


def test_one_failed_prompt_closes_the_others():
    closed: list[int] = []

    async def go():
        merged = merge_streams(closing_producers(4, closed, fail=0))
        with pytest.raises(RuntimeError, match="prompt failed"):
            async for _ in merged:
                await asyncio.sleep(0.001)  # a reader slower than the producers
        return await others_settle()

    assert asyncio.run(go()) == [] and sorted(closed) == [0, 1, 2, 3]


def test_a_single_prompts_stream_is_closed_with_the_merged_one():
    closed: list[int] = []

    async def go():
        merged = merge_streams(closing_producers(1, closed))
        await merged.__anext__()
        await merged.aclose()
        return list(closed)  # at once, not when the loop's shutdown closes what is left

    assert asyncio.run(go()) == [0]
