"""Unread outputs stay bounded: a request's stream merges what its reader has not taken
(``RequestStream``, ``merge_outputs``), and several prompts' streams merged for one
completion request pull from each only as the reader takes items (``merge_streams``)."""

from __future__ import annotations

import asyncio

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
    pending = output(sample(1, "a", [5]))
    merge_outputs(pending, output(sample(0, "x", [9])), RequestOutputKind.DELTA)
    merge_outputs(pending, output(sample(1, "bc", [6, 7], "stop")), RequestOutputKind.DELTA)
    merge_outputs(pending, output(sample(0, "y", [8], "length"), finished=True),
                  RequestOutputKind.DELTA)  # fmt: skip
    assert [c.index for c in pending.outputs] == [1, 0] and pending.finished
    one, zero = pending.outputs
    assert (one.text, one.token_ids, one.finish_reason) == ("abc", [5, 6, 7], "stop")
    assert (zero.text, zero.token_ids, zero.finish_reason) == ("xy", [9, 8], "length")
    assert [list(lp) for lp in one.logprobs] == [[5], [6], [7]]
    assert one.cumulative_logprob == -2.0  # the newest, not a sum


def test_cumulative_outputs_keep_each_samples_newest():
    pending = output(sample(0, "a", [5]), sample(1, "x", [9]))
    merge_outputs(pending, output(sample(0, "ab", [5, 6])), RequestOutputKind.CUMULATIVE)
    assert [c.token_ids for c in pending.outputs] == [[5, 6], [9]]


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
