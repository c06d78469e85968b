"""Persistent device buffers for the step inputs (CUDA): pinned host staging, one
asynchronous copy per buffer, and padding up to a captured CUDA graph's batch size.

Invariant: the device buffers never move, so a CUDA graph captured on views of them reads
each step's inputs after ``load`` fills them. Every CUDA step, eager or replayed, is loaded
here as its ``StepPlan`` lays it out (padding requests: ``pagedllm.worker.step_plan``).
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.worker.input_batch import HostBatch, StepBatch
from pagedllm.worker.step_plan import StepPlan, assemble_step_batch


class InputBuffers:
    def __init__(
        self,
        max_tokens: int,
        max_reqs: int,
        max_blocks: int,
        block_size: int,
        scratch_block: int,
        device: torch.device,
    ) -> None:
        self.device = device
        self.max_tokens = max_tokens
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.scratch_slot = scratch_block * block_size
        shapes = buffer_shapes(max_tokens, max_reqs, max_blocks)
        self.max_reqs = max_reqs
        self.host = {k: torch.zeros(s, dtype=d, pin_memory=True) for k, (s, d) in shapes.items()}
        self.host_arrays = {name: t.numpy() for name, t in self.host.items()}  # same memory
        self.dev = {k: torch.zeros(s, dtype=d, device=device) for k, (s, d) in shapes.items()}
        # Set when the last step's copies out of the pinned buffers are done; waited on
        # before they are overwritten (the copies are asynchronous).
        self.copied = torch.cuda.Event()
        self.copied.record()

    def load(self, batch: HostBatch, plan: StepPlan) -> StepBatch:
        """Copy the batch in as ``plan`` lays it out (padding requests included) and
        return the step's views of the buffers."""
        assert plan.padded_tokens <= self.max_tokens and plan.padded_reqs <= self.max_reqs
        self.copied.synchronize()
        host = self.host_arrays
        rows, cols = fill_host(host, batch, plan, self.scratch_block, self.block_size)
        padded_reqs, padded_tokens = plan.padded_reqs, plan.padded_tokens
        sizes = {
            "input_ids": padded_tokens, "positions": padded_tokens,
            "slot_mapping": padded_tokens, "query_start_loc": padded_reqs + 1,
            "seq_lens": padded_reqs, "logits_indices": len(batch.logits_indices),
            "decode_order": padded_reqs if plan.max_query_len == 1 else 0,
        }  # fmt: skip
        self._copy("input_ids", padded_tokens)
        batch.fill_pending(self.dev["input_ids"])
        for name in ("positions", "slot_mapping", "query_start_loc", "seq_lens", "decode_order"):
            self._copy(name, sizes[name])
        self.dev["block_table"][:rows, :cols].copy_(
            self.host["block_table"][:rows, :cols], non_blocking=True
        )
        self._copy("logits_indices", sizes["logits_indices"])
        self.copied.record()
        views = {name: self.dev[name][:n] for name, n in sizes.items()}
        views["block_table"] = self.dev["block_table"][:padded_reqs]
        return assemble_step_batch(
            batch, plan, views, host["query_start_loc"][: padded_reqs + 1],
            host["seq_lens"][:padded_reqs],
        )  # fmt: skip

    def _copy(self, name: str, n: int) -> None:
        self.dev[name][:n].copy_(self.host[name][:n], non_blocking=True)


def buffer_shapes(
    max_tokens: int, max_reqs: int, max_blocks: int
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each step input's buffer: its shape at the largest step, and its dtype."""
    return {
        "input_ids": ((max_tokens,), torch.int64),
        "positions": ((max_tokens,), torch.int64),
        "slot_mapping": ((max_tokens,), torch.int64),
        "query_start_loc": ((max_reqs + 1,), torch.int32),
        "seq_lens": ((max_reqs,), torch.int32),
        "block_table": ((max_reqs, max_blocks), torch.int32),
        "logits_indices": ((max_reqs,), torch.int64),
        "decode_order": ((max_reqs,), torch.int32),
    }


def fill_host(
    host: dict[str, np.ndarray],
    batch: HostBatch,
    plan: StepPlan,
    scratch_block: int,
    block_size: int,
) -> tuple[int, int]:
    """Write the batch and its padding requests (``plan``) into the staging arrays; the
    block table rows and columns the step must copy (rows past them are never read:
    their requests have no keys). Padding tokens: id 0, position 0, the scratch slot."""
    reqs, tokens = plan.num_reqs, plan.num_tokens
    decodes, chunk = plan.pad_decodes, plan.pad_chunk
    padded_reqs, padded_tokens = plan.padded_reqs, plan.padded_tokens
    qsl, seq_lens, table = host["query_start_loc"], host["seq_lens"], host["block_table"]
    _fill(host["input_ids"], batch.input_ids, padded_tokens, 0)
    _fill(host["positions"], batch.positions, padded_tokens, 0)
    _fill(host["slot_mapping"], batch.slot_mapping, padded_tokens, scratch_block * block_size)
    _fill(seq_lens, batch.seq_lens, padded_reqs, 0)
    _fill(host["logits_indices"], batch.logits_indices, len(batch.logits_indices), 0)
    qsl[: reqs + 1] = batch.query_start_loc
    width = batch.block_table.shape[1]
    table[:reqs, :width] = batch.block_table
    # One-token requests (decode graphs): one key each, in the scratch slot.
    qsl[reqs + 1 : reqs + decodes + 1] = np.arange(tokens + 1, tokens + decodes + 1)
    seq_lens[reqs : reqs + decodes] = 1
    table[reqs : reqs + decodes, 0] = scratch_block
    if plan.max_query_len == 1:
        # Longest first: the decode kernel's last programs are then its shortest, so the
        # step does not wait on one long request started late.
        host["decode_order"][:padded_reqs] = np.argsort(-seq_lens[:padded_reqs], kind="stable")
    rows = reqs + decodes
    if padded_reqs == rows:
        return rows, width
    # The rest (mixed graphs): one request of ``chunk`` tokens whose keys 0 .. chunk - 1
    # lie in the scratch block (slot by position), then empty requests ending with the batch.
    start = tokens + decodes
    host["slot_mapping"][start : start + chunk] += np.arange(chunk, dtype=np.int64) % block_size
    qsl[rows + 1 : padded_reqs + 1] = padded_tokens
    seq_lens[rows] = chunk
    chunk_blocks = -(-chunk // block_size)
    table[rows, :chunk_blocks] = scratch_block
    return rows + 1, max(width, chunk_blocks)


def _fill(target: np.ndarray, values: np.ndarray, total: int, pad: int) -> None:
    target[: len(values)] = values
    target[len(values) : total] = pad


def dummy_decode_batch(num_reqs: int, block_size: int, scratch_block: int) -> HostBatch:
    """A decode batch that touches only the scratch block (CUDA graph capture, profiling)."""
    zeros = np.zeros(num_reqs, dtype=np.int64)
    return HostBatch(
        req_ids=[f"dummy-{i}" for i in range(num_reqs)],
        input_ids=zeros,
        positions=zeros,
        slot_mapping=np.full(num_reqs, scratch_block * block_size, dtype=np.int64),
        query_start_loc=np.arange(num_reqs + 1, dtype=np.int32),
        seq_lens=np.ones(num_reqs, dtype=np.int32),
        block_table=np.full((num_reqs, 1), scratch_block, dtype=np.int32),
        logits_indices=np.arange(num_reqs, dtype=np.int64),
        sampled_req_indices=list(range(num_reqs)),
        num_decodes=num_reqs,
        block_size=block_size,
    )
