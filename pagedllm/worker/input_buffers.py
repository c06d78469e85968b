"""Persistent device buffers for the step inputs (CUDA): pinned host staging, one
asynchronous copy per buffer, and padding up to a captured CUDA graph's batch size.

Invariant: the device buffers never move, so a CUDA graph captured on views of them reads
each step's inputs after ``load`` fills them. Padded requests (graph batches) hold one
token at position 0 whose K/V go to the scratch slot past the last real block, attending
to a context of one key; their outputs are discarded.
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.worker.input_batch import HostBatch, StepBatch


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
        shapes = {
            "input_ids": ((max_tokens,), torch.int64),
            "positions": ((max_tokens,), torch.int64),
            "slot_mapping": ((max_tokens,), torch.int64),
            "query_start_loc": ((max_reqs + 1,), torch.int32),
            "seq_lens": ((max_reqs,), torch.int32),
            "block_table": ((max_reqs, max_blocks), torch.int32),
            "logits_indices": ((max_reqs,), torch.int64),
        }
        self.host = {k: torch.zeros(s, dtype=d, pin_memory=True) for k, (s, d) in shapes.items()}
        self.dev = {k: torch.zeros(s, dtype=d, device=device) for k, (s, d) in shapes.items()}
        # Set when the last step's copies out of the pinned buffers are done; waited on
        # before they are overwritten (the copies are asynchronous).
        self.copied = torch.cuda.Event()
        self.copied.record()

    def load(self, batch: HostBatch, pad_reqs: int = 0, num_segments: int = 1) -> StepBatch:
        """Copy the batch in; with ``pad_reqs`` > num_reqs (a pure decode batch), pad it to
        that many one-token requests for a CUDA graph of that size."""
        self.copied.synchronize()
        reqs, tokens = batch.num_reqs, batch.num_tokens
        padded_reqs = max(pad_reqs, reqs)
        padded_tokens = tokens + (padded_reqs - reqs)
        width = batch.block_table.shape[1]
        host = {name: t.numpy() for name, t in self.host.items()}
        _fill(host["input_ids"], batch.input_ids, padded_tokens, 0)
        _fill(host["positions"], batch.positions, padded_tokens, 0)
        _fill(host["slot_mapping"], batch.slot_mapping, padded_tokens, self.scratch_slot)
        qsl = host["query_start_loc"]
        qsl[: reqs + 1] = batch.query_start_loc
        qsl[reqs + 1 : padded_reqs + 1] = np.arange(tokens + 1, padded_tokens + 1)
        _fill(host["seq_lens"], batch.seq_lens, padded_reqs, 1)
        host["block_table"][:reqs, :width] = batch.block_table
        host["block_table"][reqs:padded_reqs, 0] = self.scratch_block
        _fill(host["logits_indices"], batch.logits_indices, len(batch.logits_indices), 0)
        self._copy("input_ids", padded_tokens)
        batch.fill_pending(self.dev["input_ids"])
        self._copy("positions", padded_tokens)
        self._copy("slot_mapping", padded_tokens)
        self._copy("query_start_loc", padded_reqs + 1)
        self._copy("seq_lens", padded_reqs)
        self.dev["block_table"][:padded_reqs, :width].copy_(
            self.host["block_table"][:padded_reqs, :width], non_blocking=True
        )
        self._copy("logits_indices", len(batch.logits_indices))
        self.copied.record()
        attn = CommonAttentionMetadata(
            num_reqs=padded_reqs,
            num_tokens=padded_tokens,
            num_decodes=batch.num_decodes + (padded_reqs - reqs),
            block_size=self.block_size,
            query_start_loc=self.dev["query_start_loc"][: padded_reqs + 1],
            seq_lens=self.dev["seq_lens"][:padded_reqs],
            block_table=self.dev["block_table"][:padded_reqs],
            slot_mapping=self.dev["slot_mapping"][:padded_tokens],
            query_start_loc_cpu=qsl[: padded_reqs + 1].tolist(),
            seq_lens_cpu=host["seq_lens"][:padded_reqs].tolist(),
            max_query_len=batch.max_query_len,
            max_seq_len=int(batch.seq_lens.max()),
            num_segments=num_segments,
        )
        return StepBatch(
            batch.req_ids,
            self.dev["input_ids"][:padded_tokens],
            self.dev["positions"][:padded_tokens],
            attn,
            self.dev["logits_indices"][: len(batch.logits_indices)],
            batch.sampled_req_indices,
        )

    def load_mixed(self, batch: HostBatch, pad_tokens: int, num_reqs: int) -> StepBatch:
        """Copy a batch with prefill chunks in, padded for a mixed CUDA graph: exactly
        ``pad_tokens`` tokens and ``num_reqs`` requests. The padding tokens form one dummy
        request (its K/V all in the scratch block, at position 0 for the rotary table);
        requests past it are empty."""
        self.copied.synchronize()
        reqs, tokens = batch.num_reqs, batch.num_tokens
        extra = pad_tokens - tokens
        assert extra >= 0 and reqs < num_reqs, "the batch does not fit this graph"
        assert num_reqs <= self.host["seq_lens"].shape[0], "more requests than the buffers hold"
        host = {name: t.numpy() for name, t in self.host.items()}
        pad_pos = np.arange(extra, dtype=np.int64)
        host["input_ids"][:tokens] = batch.input_ids
        host["input_ids"][tokens:pad_tokens] = 0
        host["positions"][:tokens] = batch.positions
        host["positions"][tokens:pad_tokens] = 0  # any valid rotary row; keys stay causal
        host["slot_mapping"][:tokens] = batch.slot_mapping
        host["slot_mapping"][tokens:pad_tokens] = self.scratch_slot + pad_pos % self.block_size
        qsl = host["query_start_loc"]
        qsl[: reqs + 1] = batch.query_start_loc
        qsl[reqs + 1 : num_reqs + 1] = pad_tokens
        host["seq_lens"][:reqs] = batch.seq_lens
        host["seq_lens"][reqs] = extra
        host["seq_lens"][reqs + 1 : num_reqs] = 0
        width = batch.block_table.shape[1]
        pad_blocks = -(-extra // self.block_size)
        host["block_table"][:reqs, :width] = batch.block_table
        host["block_table"][reqs, :pad_blocks] = self.scratch_block
        _fill(host["logits_indices"], batch.logits_indices, len(batch.logits_indices), 0)
        sizes = {"input_ids": pad_tokens, "positions": pad_tokens, "slot_mapping": pad_tokens,
                 "query_start_loc": num_reqs + 1, "seq_lens": num_reqs,
                 "logits_indices": len(batch.logits_indices)}  # fmt: skip
        for name, n in sizes.items():
            self._copy(name, n)
        batch.fill_pending(self.dev["input_ids"])
        cols = max(width, pad_blocks)
        self.dev["block_table"][: reqs + 1, :cols].copy_(
            self.host["block_table"][: reqs + 1, :cols], non_blocking=True
        )
        self.copied.record()
        attn = CommonAttentionMetadata(
            num_reqs=num_reqs,
            num_tokens=pad_tokens,
            num_decodes=batch.num_decodes,
            block_size=self.block_size,
            query_start_loc=self.dev["query_start_loc"][: num_reqs + 1],
            seq_lens=self.dev["seq_lens"][:num_reqs],
            block_table=self.dev["block_table"][:num_reqs],
            slot_mapping=self.dev["slot_mapping"][:pad_tokens],
            query_start_loc_cpu=qsl[: num_reqs + 1].tolist(),
            seq_lens_cpu=host["seq_lens"][:num_reqs].tolist(),
            max_query_len=max(batch.max_query_len, 2),  # the prefill kernel configuration
            max_seq_len=max(int(batch.seq_lens.max()), extra),
            num_segments=1,
        )
        return StepBatch(
            batch.req_ids,
            self.dev["input_ids"][:pad_tokens],
            self.dev["positions"][:pad_tokens],
            attn,
            self.dev["logits_indices"][: len(batch.logits_indices)],
            batch.sampled_req_indices,
        )

    def _copy(self, name: str, n: int) -> None:
        self.dev[name][:n].copy_(self.host[name][:n], non_blocking=True)


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
