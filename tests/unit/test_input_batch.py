"""build_host_batch lays decodes out with whole-batch array operations: the same batch as
reading each request's tokens and blocks one by one."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pagedllm.core.scheduler_output import CachedRequestData, SchedulerOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.block_table import BlockTable
from pagedllm.worker.input_batch import HostBatch, build_host_batch
from pagedllm.worker.request_state import RequestState

BLOCK = 4


def state(
    rng: random.Random, rid: str, kind: str, table: BlockTable, blocks: list[int]
) -> tuple[RequestState, int]:
    """A request of one kind and the tokens it computes this step."""
    prompt = [rng.randrange(1, 1000) for _ in range(rng.randrange(2, 30))]
    s = RequestState(rid, prompt, SamplingParams(), table.add(blocks), 0, list(prompt), None)
    if kind == "chunk":  # a prefill chunk, from a cache hit or an earlier chunk
        s.num_computed_tokens = rng.randrange(0, len(prompt) - 1)
        return s, rng.randrange(2, len(prompt) - s.num_computed_tokens + 1)
    s.token_ids += [rng.randrange(1, 1000) for _ in range(rng.randrange(1, 9))]
    s.num_computed_tokens = len(s.token_ids) - 1
    if kind == "in flight":  # async scheduling: its input is the last step's sample
        s.num_computed_tokens += 1
        s.num_pending, s.pending_row = 1, rng.randrange(0, 64)
    return s, 1


def one_by_one(so: SchedulerOutput, states: dict[str, RequestState], blocks: dict) -> dict:
    """The batch built request by request, the obvious way."""
    counts = so.num_scheduled_tokens
    order = [r.req_id for r in so.scheduled_cached_reqs]
    order = [r for r in order if counts[r] == 1] + [r for r in order if counts[r] != 1]
    ids, positions, slots, fills, fill_rows, sampled, lengths = [], [], [], [], [], [], []
    for i, rid in enumerate(order):
        s, n = states[rid], counts[rid]
        start = s.num_computed_tokens
        for p in range(start, start + n):
            in_flight = p == len(s.token_ids)
            if in_flight:
                fills.append(len(ids))
                fill_rows.append(s.pending_row)
            ids.append(0 if in_flight else s.token_ids[p])
            positions.append(p)
            slots.append(blocks[rid][p // BLOCK] * BLOCK + p % BLOCK)
        lengths.append(start + n)
        if start + n == s.num_tokens:
            sampled.append(i)
    width = max(-(-n // BLOCK) for n in lengths)
    table = np.zeros((len(order), width), np.int32)
    for i, rid in enumerate(order):
        k = -(-lengths[i] // BLOCK)
        table[i, :k] = blocks[rid][:k]
    return {
        "req_ids": order, "input_ids": ids, "positions": positions, "slot_mapping": slots,
        "seq_lens": lengths, "block_table": table, "sampled_req_indices": sampled,
        "fill_positions": fills, "fill_rows": fill_rows,
        "num_decodes": sum(counts[r] == 1 for r in order),
    }  # fmt: skip


def scheduled(rng: random.Random, kinds: list[str]) -> tuple[SchedulerOutput, dict, dict]:
    """Requests of these kinds, each with more blocks than its context (allocated ahead),
    their rows in a table that has held other requests before (stale ids in its rows)."""
    table = BlockTable(rows=2, columns=4)  # grows in both directions
    for _ in range(8):
        table.release(table.add(rng.sample(range(10_000), 30)))
    states, counts, cached, blocks = {}, {}, [], {}
    for i, kind in enumerate(kinds):
        rid = f"r{i}"
        blocks[rid] = rng.sample(range(10_000), 20)
        states[rid], counts[rid] = state(rng, rid, kind, table, blocks[rid])
        cached.append(CachedRequestData(rid, False, [], states[rid].num_computed_tokens))
    rng.shuffle(cached)
    so = SchedulerOutput([], cached, counts, sum(counts.values()))
    return so, states, {"table": table, "blocks": blocks}


def as_lists(batch: HostBatch) -> dict:
    got = {name: getattr(batch, name) for name in
           ("req_ids", "input_ids", "positions", "slot_mapping", "seq_lens", "block_table",
            "sampled_req_indices", "fill_positions", "fill_rows", "num_decodes")}  # fmt: skip
    return {k: v.tolist() if isinstance(v, np.ndarray) and k != "block_table" else v
            for k, v in got.items()}  # fmt: skip


@pytest.mark.parametrize("seed", range(20))
def test_the_batch_is_the_one_built_request_by_request(seed: int) -> None:
    rng = random.Random(seed)
    kinds = [rng.choice(["in flight", "known", "chunk"]) for _ in range(rng.randrange(1, 40))]
    so, states, made = scheduled(rng, kinds)
    batch = build_host_batch(so, states, made["table"], BLOCK)
    want = one_by_one(so, states, made["blocks"])
    got = as_lists(batch)
    np.testing.assert_array_equal(got.pop("block_table"), want.pop("block_table"))
    assert got == want
    starts = batch.query_start_loc
    assert batch.logits_indices.tolist() == [starts[i + 1] - 1 for i in want["sampled_req_indices"]]


def test_a_decode_of_a_token_neither_known_nor_in_flight_is_refused() -> None:
    rng = random.Random(0)
    so, states, made = scheduled(rng, ["in flight", "in flight"])
    states["r1"].num_pending = 0  # its input token was never sampled
    with pytest.raises(AssertionError, match="not in flight"):
        build_host_batch(so, states, made["table"], BLOCK)


def test_a_chunk_past_the_known_tokens_is_refused() -> None:
    rng = random.Random(1)
    so, states, made = scheduled(rng, ["known", "chunk"])
    states["r1"].num_computed_tokens = len(states["r1"].token_ids) - 1
    with pytest.raises(AssertionError, match="past its known tokens"):
        build_host_batch(so, states, made["table"], BLOCK)


def test_a_context_past_the_requests_blocks_is_refused() -> None:
    rng = random.Random(2)
    so, states, made = scheduled(rng, ["known"])
    made["table"].replace(states["r0"].block_row, [])  # fewer blocks than its context
    with pytest.raises(AssertionError, match="past its request's blocks"):
        build_host_batch(so, states, made["table"], BLOCK)


def test_rows_are_reused_grown_and_replaced() -> None:
    table = BlockTable(rows=1, columns=2)
    a = table.add([1, 2, 3])  # wider than the table
    b = table.add([4])  # a second row
    table.extend(a, [5])
    assert (table.row(a), table.row(b)) == ([1, 2, 3, 5], [4])
    table.release(a)
    c = table.add([9])
    assert c == a and table.row(c) == [9]  # a released row starts empty
    table.replace(b, [6, 7])
    assert table.row(b) == [6, 7]
    np.testing.assert_array_equal(table.gather(np.array([b, c]), np.array([1, 1])), [[6], [9]])
