"""The shape one step runs at (``StepPlan``) and the device batch built from it.

Every step goes through ``plan_step`` and ``assemble_step_batch``: an eager batch (on the
CPU copied as is by ``eager_step_batch``; on CUDA through ``InputBuffers.load``), a decode
CUDA graph's and a mixed one's. A graph replays one fixed shape, so a batch it runs is
padded with requests after the real ones. Region map of a padded batch's requests:

    [ real requests | pad_decodes one-token requests | pad_chunk tokens | empty requests ]
      num_reqs         (decode graphs)                  (mixed graphs: one request)

Every padding token has id 0 and position 0 (any valid rotary row); its K/V go to the
scratch block past the pool's, and its request's context is its own padding tokens there,
so it attends to nothing real. Its outputs are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.worker.block_table import BlockTable
from pagedllm.worker.input_batch import HostBatch, StepBatch, build_host_batch
from pagedllm.worker.request_state import RequestState


@dataclass(frozen=True)
class GraphShape:
    """A captured CUDA graph's batch: ``num_tokens`` tokens in ``num_reqs`` requests. A
    decode graph (``mixed`` False) holds one token per request; a mixed graph any split,
    its padding tokens forming one request. ``num_segments``: the split-KV segments the
    graph was captured with."""

    num_tokens: int
    num_reqs: int
    mixed: bool
    num_segments: int = 1


@dataclass(frozen=True)
class StepPlan:
    """Sizes of the batch as it runs (see the module's region map). The ``padded_*``
    counts are what the kernels see; the others the batch's real requests and tokens."""

    num_reqs: int
    num_tokens: int
    padded_reqs: int
    padded_tokens: int
    pad_decodes: int  # one-token padding requests right after the real ones
    pad_chunk: int  # tokens of the one padding request after those (0: none, or empty)
    num_decodes: int  # leading one-token requests, padding included
    max_query_len: int
    max_seq_len: int
    num_segments: int

    @property
    def padded(self) -> bool:
        return self.padded_reqs != self.num_reqs


def plan_step(batch: HostBatch, num_segments: int, graph: GraphShape | None = None) -> StepPlan:
    """The batch as it runs: as it is (``graph`` None, eager), or padded to ``graph``'s
    shape. ``num_segments`` is the backend's split for the shape that runs (a graph's
    own, fixed when it was captured)."""
    reqs, tokens = batch.num_reqs, batch.num_tokens
    max_query_len, max_seq_len = batch.max_query_len, batch.max_seq_len
    if graph is None:
        return StepPlan(
            reqs, tokens, reqs, tokens, 0, 0, batch.num_decodes, max_query_len, max_seq_len,
            num_segments,
        )  # fmt: skip
    if not graph.mixed:
        assert batch.is_pure_decode and reqs <= graph.num_reqs, "the batch does not fit"
        pad = graph.num_reqs - reqs
        return StepPlan(
            reqs, tokens, graph.num_reqs, tokens + pad, pad, 0, batch.num_decodes + pad,
            max_query_len, max_seq_len, num_segments,
        )  # fmt: skip
    extra = graph.num_tokens - tokens
    assert extra >= 0 and reqs < graph.num_reqs, "the batch does not fit this graph"
    return StepPlan(
        reqs, tokens, graph.num_reqs, graph.num_tokens, 0, extra, batch.num_decodes,
        # At least 2: a mixed graph is captured with the prefill launch configuration.
        max(max_query_len, 2), max(max_seq_len, extra), num_segments,
    )  # fmt: skip


def assemble_step_batch(
    batch: HostBatch,
    plan: StepPlan,
    tensors: dict[str, torch.Tensor],
    query_start_loc: np.ndarray,
    seq_lens: np.ndarray,
) -> StepBatch:
    """The step's device batch and attention metadata. ``tensors`` (on the device) hold
    exactly the planned rows: input_ids, positions, slot_mapping [padded_tokens];
    query_start_loc [padded_reqs + 1]; seq_lens, block_table [padded_reqs]; logits_indices
    [sampled rows]; decode_order [padded_reqs] where the runner orders a decode batch's
    programs (CUDA). ``query_start_loc`` and ``seq_lens`` are their host copies."""
    attn = CommonAttentionMetadata(
        num_reqs=plan.padded_reqs,
        num_tokens=plan.padded_tokens,
        num_decodes=plan.num_decodes,
        block_size=batch.block_size,
        query_start_loc=tensors["query_start_loc"],
        seq_lens=tensors["seq_lens"],
        block_table=tensors["block_table"],
        slot_mapping=tensors["slot_mapping"],
        query_start_loc_cpu=query_start_loc.tolist(),
        seq_lens_cpu=seq_lens.tolist(),
        max_query_len=plan.max_query_len,
        max_seq_len=plan.max_seq_len,
        num_segments=plan.num_segments,
        decode_order=tensors.get("decode_order") if plan.max_query_len == 1 else None,
    )
    return StepBatch(
        batch.req_ids,
        tensors["input_ids"],
        tensors["positions"],
        attn,
        tensors["logits_indices"],
        batch.sampled_req_indices,
    )


def eager_step_batch(batch: HostBatch, plan: StepPlan, device: torch.device) -> StepBatch:
    """Plain copies (zero-copy on the CPU) of an unpadded batch; CUDA steps go through
    ``InputBuffers.load``, which pads."""
    assert not plan.padded, "padded batches run from the persistent input buffers"
    names = ("input_ids", "positions", "slot_mapping", "query_start_loc", "seq_lens",
             "block_table", "logits_indices")  # fmt: skip
    tensors = {name: torch.from_numpy(getattr(batch, name)).to(device) for name in names}
    batch.fill_pending(tensors["input_ids"])
    return assemble_step_batch(batch, plan, tensors, batch.query_start_loc, batch.seq_lens)


def build_step_batch(
    scheduler_output: SchedulerOutput,
    requests: dict[str, RequestState],
    block_table: BlockTable,
    block_size: int,
    device: torch.device,
) -> StepBatch:
    """A scheduler output straight to an eager device batch (no split-KV)."""
    host = build_host_batch(scheduler_output, requests, block_table, block_size)
    return eager_step_batch(host, plan_step(host, 1), device)
