"""One padding plan for eager batches, decode graphs and mixed graphs (``plan_step``), and
the staging arrays ``InputBuffers.load`` copies (``fill_host``): numpy only, no GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedllm.worker.input_batch import HostBatch
from pagedllm.worker.input_buffers import fill_host
from pagedllm.worker.step_plan import GraphShape, eager_step_batch, plan_step

BLOCK, SCRATCH = 4, 50


def batch(query_lens: list[int], seq_lens: list[int]) -> HostBatch:
    """Decodes first; request i's blocks are 10 * i + 1, 10 * i + 2, ..."""
    qsl = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
    blocks = [-(-s // BLOCK) for s in seq_lens]
    table = np.zeros((len(seq_lens), max(blocks)), dtype=np.int32)
    for i, n in enumerate(blocks):
        table[i, :n] = 10 * i + 1 + np.arange(n)
    tokens = int(qsl[-1])
    return HostBatch(
        req_ids=[f"r{i}" for i in range(len(seq_lens))],
        input_ids=np.arange(100, 100 + tokens, dtype=np.int64),
        positions=np.arange(1, 1 + tokens, dtype=np.int64),
        slot_mapping=np.arange(7, 7 + tokens, dtype=np.int64),
        query_start_loc=qsl,
        seq_lens=np.asarray(seq_lens, dtype=np.int32),
        block_table=table,
        logits_indices=qsl[1:].astype(np.int64) - 1,
        sampled_req_indices=list(range(len(seq_lens))),
        num_decodes=sum(1 for n in query_lens if n == 1),
        block_size=BLOCK,
    )


def staging() -> dict[str, np.ndarray]:
    """Staging arrays full of a stale value, as after earlier steps."""
    stale = 99
    return {
        "input_ids": np.full(64, stale, dtype=np.int64),
        "positions": np.full(64, stale, dtype=np.int64),
        "slot_mapping": np.full(64, stale, dtype=np.int64),
        "query_start_loc": np.full(17, stale, dtype=np.int32),
        "seq_lens": np.full(16, stale, dtype=np.int32),
        "block_table": np.full((16, 8), stale, dtype=np.int32),
        "logits_indices": np.full(16, stale, dtype=np.int64),
        "decode_order": np.full(16, stale, dtype=np.int32),
    }


def test_eager_batches_run_as_they_are() -> None:
    b = batch([1, 1, 5], [9, 3, 12])
    plan = plan_step(b, 4)
    assert not plan.padded
    assert (plan.padded_reqs, plan.padded_tokens, plan.num_decodes) == (3, 7, 2)
    assert (plan.max_query_len, plan.max_seq_len, plan.num_segments) == (5, 12, 4)
    host = staging()
    rows, cols = fill_host(host, b, plan, SCRATCH, BLOCK)
    assert (rows, cols) == (3, 3)
    assert host["query_start_loc"][:4].tolist() == [0, 1, 2, 7]
    assert np.array_equal(host["block_table"][:3, :3], b.block_table)
    step = eager_step_batch(b, plan, torch.device("cpu"))
    assert step.attn.num_segments == 4 and step.attn.query_start_loc_cpu == [0, 1, 2, 7]
    assert step.input_ids.tolist() == list(range(100, 107))


def test_decode_graph_pads_with_one_token_requests_in_the_scratch_block() -> None:
    b = batch([1, 1], [9, 3])
    plan = plan_step(b, 2, GraphShape(5, 5, mixed=False, num_segments=2))
    assert (plan.padded_reqs, plan.padded_tokens, plan.pad_decodes) == (5, 5, 3)
    assert plan.num_decodes == 5 and plan.max_query_len == 1 and plan.num_segments == 2
    host = staging()
    rows, cols = fill_host(host, b, plan, SCRATCH, BLOCK)
    assert (rows, cols) == (5, 3)
    assert host["input_ids"][:5].tolist() == [100, 101, 0, 0, 0]
    assert host["positions"][:5].tolist() == [1, 2, 0, 0, 0]
    assert host["slot_mapping"][:5].tolist() == [7, 8] + [SCRATCH * BLOCK] * 3
    assert host["query_start_loc"][:6].tolist() == [0, 1, 2, 3, 4, 5]
    assert host["seq_lens"][:5].tolist() == [9, 3, 1, 1, 1]
    assert host["block_table"][2:5, 0].tolist() == [SCRATCH] * 3
    assert host["decode_order"][:5].tolist() == [0, 1, 2, 3, 4]


def test_a_decode_batch_starts_its_longest_requests_first() -> None:
    """The decode kernel's program i serves ``decode_order[i]``: the longest contexts start
    first, the padding requests (one key each) last; a mixed batch leaves the order alone."""
    b = batch([1, 1, 1, 1], [3, 30, 9, 30])
    plan = plan_step(b, 2, GraphShape(6, 6, mixed=False, num_segments=1))
    host = staging()
    fill_host(host, b, plan, SCRATCH, BLOCK)
    assert host["decode_order"][:6].tolist() == [1, 3, 2, 0, 4, 5]
    mixed = batch([1, 6], [9, 6])
    host = staging()
    fill_host(host, mixed, plan_step(mixed, 1, GraphShape(16, 5, mixed=True)), SCRATCH, BLOCK)
    assert host["decode_order"].tolist() == [99] * 16


def test_mixed_graph_pads_with_one_chunk_then_empty_requests() -> None:
    b = batch([1, 6], [9, 6])
    plan = plan_step(b, 1, GraphShape(16, 5, mixed=True))
    assert (plan.padded_reqs, plan.padded_tokens, plan.pad_chunk) == (5, 16, 9)
    assert plan.num_decodes == 1 and plan.max_seq_len == 9
    host = staging()
    rows, cols = fill_host(host, b, plan, SCRATCH, BLOCK)
    assert (rows, cols) == (3, 3)  # the chunk's 9 keys take 3 scratch-block entries
    assert host["input_ids"][7:16].tolist() == [0] * 9
    assert host["positions"][7:16].tolist() == [0] * 9
    # Keys 0..8 of the padding request, slot by position in the scratch block.
    assert host["slot_mapping"][7:16].tolist() == [SCRATCH * BLOCK + p % BLOCK for p in range(9)]
    assert host["query_start_loc"][:6].tolist() == [0, 1, 7, 16, 16, 16]
    assert host["seq_lens"][:5].tolist() == [9, 6, 9, 0, 0]
    assert host["block_table"][2, :3].tolist() == [SCRATCH] * 3


def test_a_mixed_graph_is_captured_with_the_prefill_launch() -> None:
    """A mixed graph captured on one decode still launches the prefill configuration."""
    b = batch([1], [1])
    plan = plan_step(b, 1, GraphShape(8, 3, mixed=True))
    assert plan.max_query_len == 2 and plan.pad_chunk == 7 and plan.num_decodes == 1


@pytest.mark.parametrize("graph", [GraphShape(1, 1, mixed=False), GraphShape(4, 2, mixed=True)])
def test_a_batch_larger_than_the_graph_is_refused(graph: GraphShape) -> None:
    with pytest.raises(AssertionError, match="does not fit"):
        plan_step(batch([1, 1, 3], [2, 2, 3]) if graph.mixed else batch([1, 1], [2, 2]), 1, graph)
