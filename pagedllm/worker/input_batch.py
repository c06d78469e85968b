"""Turn one ``SchedulerOutput`` into the flat ragged batch the model consumes.

Region map of the batch (tokens laid end to end):

    [ decode 0 | decode 1 | ... | prefill chunk A ......... | prefill chunk B .... ]
      one token per decode          query_len tokens each

A request is sampled when its chunk reaches the end of its known tokens; the logits are
computed only at those rows (``logits_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.worker.request_state import RequestState
from pagedllm.worker.sampling_inputs import to_device


@dataclass
class StepBatch:
    req_ids: list[str]  # batch order
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attn: CommonAttentionMetadata
    logits_indices: torch.Tensor  # [num_sampled] int64: batch rows whose logits are sampled
    sampled_req_indices: list[int]  # for each sampled row, its request's index in req_ids


@dataclass
class HostBatch:
    """The step's inputs as numpy arrays on the host, before any device copy."""

    req_ids: list[str]
    input_ids: np.ndarray  # [tokens] int64
    positions: np.ndarray  # [tokens] int64
    slot_mapping: np.ndarray  # [tokens] int64
    query_start_loc: np.ndarray  # [reqs + 1] int32
    seq_lens: np.ndarray  # [reqs] int32
    block_table: np.ndarray  # [reqs, max blocks in this batch] int32
    logits_indices: np.ndarray  # [sampled] int64
    sampled_req_indices: list[int]
    num_decodes: int
    block_size: int
    # Decode tokens still on the device (async scheduling): batch token positions, and the
    # rows of the last step's sampled ids to take them from (``fill_from``, set by the
    # runner). Their ``input_ids`` entries are 0 until filled on the device.
    fill_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fill_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fill_from: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.query_start_loc[-1])

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    @cached_property
    def max_query_len(self) -> int:
        return int(np.diff(self.query_start_loc).max())

    @cached_property
    def max_seq_len(self) -> int:
        return int(self.seq_lens.max())

    @property
    def is_pure_decode(self) -> bool:
        return self.num_decodes == self.num_reqs and self.num_tokens == self.num_reqs

    def fill_pending(self, input_ids: torch.Tensor) -> None:
        """Write the tokens still on the device into ``input_ids`` (on that device)."""
        if not len(self.fill_positions):
            return
        assert self.fill_from is not None, "pending decode tokens without their source"
        # One host-to-device copy for both index lists.
        both = np.stack([self.fill_positions, self.fill_rows])
        positions, rows = to_device(torch.from_numpy(both), input_ids.device)
        input_ids[positions] = self.fill_from.index_select(0, rows)


def batch_order(scheduler_output: SchedulerOutput) -> list[str]:
    """Single-token queries first (batched decode attention), then prefill chunks."""
    counts = scheduler_output.num_scheduled_tokens
    ids = [r.req_id for r in scheduler_output.scheduled_cached_reqs]
    ids += [r.req_id for r in scheduler_output.scheduled_new_reqs]
    return [i for i in ids if counts[i] == 1] + [i for i in ids if counts[i] != 1]


def build_host_batch(
    scheduler_output: SchedulerOutput, requests: dict[str, RequestState], block_size: int
) -> HostBatch:
    req_ids = batch_order(scheduler_output)
    counts = scheduler_output.num_scheduled_tokens
    states = [requests[r] for r in req_ids]
    query_lens = np.array([counts[r] for r in req_ids], dtype=np.int64)
    starts = np.array([s.num_computed_tokens for s in states], dtype=np.int64)
    seq_lens = starts + query_lens
    query_start_loc = np.zeros(len(req_ids) + 1, dtype=np.int64)
    np.cumsum(query_lens, out=query_start_loc[1:])
    input_ids, positions, slots, fills = _tokens_positions_slots(
        states, starts, query_lens, block_size
    )
    sampled = [i for i, s in enumerate(states) if seq_lens[i] == s.num_tokens]
    fill_positions = query_start_loc[fills]
    return HostBatch(
        req_ids=req_ids,
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slots,
        query_start_loc=query_start_loc.astype(np.int32),
        seq_lens=seq_lens.astype(np.int32),
        block_table=_block_table(states, seq_lens, block_size),
        logits_indices=query_start_loc[1:][sampled] - 1,
        sampled_req_indices=sampled,
        num_decodes=int(np.count_nonzero(query_lens == 1)),
        block_size=block_size,
        fill_positions=fill_positions,
        fill_rows=np.array([states[i].pending_row for i in fills], dtype=np.int64),
    )


def _tokens_positions_slots(
    states: list[RequestState], starts: np.ndarray, query_lens: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Token ids, positions and cache slots, request by request, and the requests whose
    (decode) token is still on the device. A decode (one token) is done in plain Python:
    per-request numpy calls would cost more than the work."""
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    fills: list[int] = []
    for i, (state, start, n) in enumerate(zip(states, starts.tolist(), query_lens.tolist())):
        known = len(state.token_ids)
        # Only the last token can be in flight, and only a decode computes it.
        assert start + n <= known or (n == 1 and start == known and state.num_pending)
        if n == 1:
            if start == known:
                fills.append(i)
                ids.append(0)
            else:
                ids.append(state.token_ids[start])
            pos.append(start)
            slots.append(state.block_ids[start // block_size] * block_size + start % block_size)
            continue
        positions = np.arange(start, start + n, dtype=np.int64)
        blocks = np.asarray(state.block_ids, dtype=np.int64)
        ids.extend(state.token_ids[start : start + n])
        pos.extend(positions.tolist())
        slots.extend(
            (blocks[positions // block_size] * block_size + positions % block_size).tolist()
        )
    return (
        np.asarray(ids, dtype=np.int64),
        np.asarray(pos, dtype=np.int64),
        np.asarray(slots, dtype=np.int64),
        fills,
    )


def _block_table(states: list[RequestState], seq_lens: np.ndarray, block_size: int) -> np.ndarray:
    """[num_reqs, max_blocks] int32; only the blocks covering each context, 0-padded."""
    needed = -(-seq_lens // block_size)
    table = np.zeros((len(states), int(needed.max())), dtype=np.int32)
    for i, (state, n) in enumerate(zip(states, needed.tolist())):
        table[i, :n] = state.block_ids[:n]
    return table
