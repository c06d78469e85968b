"""Turn one ``SchedulerOutput`` into the flat ragged batch the model consumes.

Region map of the batch (tokens laid end to end):

    [ decode 0 | decode 1 | ... | prefill chunk A ......... | prefill chunk B .... ]
      one token per decode          query_len tokens each

A request is sampled when its chunk reaches the end of its known tokens; the logits are
computed only at those rows (``logits_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.worker.request_state import RequestState


@dataclass
class StepBatch:
    req_ids: list[str]  # batch order
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attn: CommonAttentionMetadata
    logits_indices: torch.Tensor  # [num_sampled] int64: batch rows whose logits are sampled
    sampled_req_indices: list[int]  # for each sampled row, its request's index in req_ids


def batch_order(scheduler_output: SchedulerOutput) -> list[str]:
    """Single-token queries first (batched decode attention), then prefill chunks."""
    counts = scheduler_output.num_scheduled_tokens
    ids = [r.req_id for r in scheduler_output.scheduled_cached_reqs]
    ids += [r.req_id for r in scheduler_output.scheduled_new_reqs]
    return [i for i in ids if counts[i] == 1] + [i for i in ids if counts[i] != 1]


def build_step_batch(
    scheduler_output: SchedulerOutput,
    requests: dict[str, RequestState],
    block_size: int,
    device: torch.device,
) -> StepBatch:
    req_ids = batch_order(scheduler_output)
    counts = scheduler_output.num_scheduled_tokens
    states = [requests[r] for r in req_ids]
    query_lens = np.array([counts[r] for r in req_ids], dtype=np.int64)
    starts = np.array([s.num_computed_tokens for s in states], dtype=np.int64)
    seq_lens = starts + query_lens
    query_start_loc = np.zeros(len(req_ids) + 1, dtype=np.int64)
    np.cumsum(query_lens, out=query_start_loc[1:])

    input_ids, positions, slots = _tokens_positions_slots(states, starts, query_lens, block_size)
    table = _block_table(states, seq_lens, block_size)
    sampled = [i for i, s in enumerate(states) if seq_lens[i] == len(s.token_ids)]
    logits_indices = query_start_loc[1:][sampled] - 1

    attn = CommonAttentionMetadata(
        num_reqs=len(req_ids),
        num_tokens=int(query_start_loc[-1]),
        num_decodes=int(np.count_nonzero(query_lens == 1)),
        block_size=block_size,
        query_start_loc=torch.from_numpy(query_start_loc.astype(np.int32)).to(device),
        seq_lens=torch.from_numpy(seq_lens.astype(np.int32)).to(device),
        block_table=torch.from_numpy(table).to(device),
        slot_mapping=torch.from_numpy(slots).to(device),
        query_start_loc_cpu=query_start_loc.tolist(),
        seq_lens_cpu=seq_lens.tolist(),
        max_query_len=int(query_lens.max()),
        max_seq_len=int(seq_lens.max()),
    )
    return StepBatch(
        req_ids=req_ids,
        input_ids=torch.from_numpy(input_ids).to(device),
        positions=torch.from_numpy(positions).to(device),
        attn=attn,
        logits_indices=torch.from_numpy(logits_indices).to(device),
        sampled_req_indices=sampled,
    )


def _tokens_positions_slots(
    states: list[RequestState], starts: np.ndarray, query_lens: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, pos, slots = [], [], []
    for state, start, n in zip(states, starts.tolist(), query_lens.tolist()):
        positions = np.arange(start, start + n, dtype=np.int64)
        blocks = np.asarray(state.block_ids, dtype=np.int64)
        ids.append(np.asarray(state.token_ids[start : start + n], dtype=np.int64))
        pos.append(positions)
        slots.append(blocks[positions // block_size] * block_size + positions % block_size)
    return np.concatenate(ids), np.concatenate(pos), np.concatenate(slots)


def _block_table(states: list[RequestState], seq_lens: np.ndarray, block_size: int) -> np.ndarray:
    """[num_reqs, max_blocks] int32; only the blocks covering each context, 0-padded."""
    needed = -(-seq_lens // block_size)
    table = np.zeros((len(states), int(needed.max())), dtype=np.int32)
    for i, (state, n) in enumerate(zip(states, needed.tolist())):
        table[i, :n] = state.block_ids[:n]
    return table
