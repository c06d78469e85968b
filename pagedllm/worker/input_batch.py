"""Turn one ``SchedulerOutput`` into the flat ragged batch the model consumes.

Region map of the batch (tokens laid end to end):

    [ decode 0 | decode 1 | ... | prefill chunk A ......... | prefill chunk B .... ]
      one token per decode          query_len tokens each

A request is sampled when its chunk reaches the end of its known tokens; the logits are
computed only at those rows (``logits_indices``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter

import numpy as np
import torch

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.worker.block_table import BlockTable
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


_computed = attrgetter("num_computed_tokens")
_token_ids = attrgetter("token_ids")
_pending = attrgetter("num_pending")
_block_row = attrgetter("block_row")
_pending_row = attrgetter("pending_row")


def batch_order(scheduler_output: SchedulerOutput) -> list[str]:
    """Single-token queries first (batched decode attention), then prefill chunks."""
    counts = scheduler_output.num_scheduled_tokens
    ids = [r.req_id for r in scheduler_output.scheduled_cached_reqs]
    ids += [r.req_id for r in scheduler_output.scheduled_new_reqs]
    if scheduler_output.is_all_decodes:
        return ids
    return [i for i in ids if counts[i] == 1] + [i for i in ids if counts[i] != 1]


def build_host_batch(
    scheduler_output: SchedulerOutput,
    requests: dict[str, RequestState],
    block_table: BlockTable,
    block_size: int,
) -> HostBatch:
    """The step's inputs. Its decodes (one token each, first in the batch) are laid out
    with whole-batch numpy operations: per request only its numbers and block ids are read
    (RESULTS "The host's time per step at 256 to 1,024 requests")."""
    req_ids = batch_order(scheduler_output)
    counts = scheduler_output.num_scheduled_tokens
    states = list(map(requests.__getitem__, req_ids))
    num_reqs = len(states)

    def column(values: Iterable[int]) -> np.ndarray:
        return np.fromiter(values, np.int64, num_reqs)

    # map() with C-level getters: a generator's frame per element costs ~2x as much.
    query_lens = column(map(counts.__getitem__, req_ids))
    starts = column(map(_computed, states))
    known = column(map(len, map(_token_ids, states)))
    pending = column(map(_pending, states))
    seq_lens = starts + query_lens
    query_start_loc = np.zeros(num_reqs + 1, dtype=np.int64)
    np.cumsum(query_lens, out=query_start_loc[1:])
    num_decodes = int(np.count_nonzero(query_lens == 1))
    rows = column(map(_block_row, states))
    # only the blocks covering each context, 0-padded
    table = block_table.gather(rows, -(-seq_lens // block_size))
    input_ids, positions, slots, fills = _tokens_positions_slots(
        states, starts, query_lens, query_start_loc, known, pending, table, num_decodes,
        block_size,
    )  # fmt: skip
    # A chunk that reaches the end of the known tokens and those in flight samples.
    sampled = np.flatnonzero(seq_lens == known + pending)
    return HostBatch(
        req_ids=req_ids,
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slots,
        query_start_loc=query_start_loc.astype(np.int32),
        seq_lens=seq_lens.astype(np.int32),
        block_table=table,
        logits_indices=query_start_loc[1:][sampled] - 1,
        sampled_req_indices=sampled.tolist(),
        num_decodes=num_decodes,
        block_size=block_size,
        fill_positions=query_start_loc[fills],
        fill_rows=np.fromiter(
            map(_pending_row, map(states.__getitem__, fills.tolist())), np.int64, len(fills)
        ),
    )


def _tokens_positions_slots(
    states: list[RequestState],
    starts: np.ndarray,
    query_lens: np.ndarray,
    query_start_loc: np.ndarray,
    known: np.ndarray,
    pending: np.ndarray,
    table: np.ndarray,
    num_decodes: int,
    block_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, positions and cache slots, and the requests whose (decode) token is still
    on the device. Positions and slots for the whole batch at once; token ids of decodes
    (token i is request i's) by index, of each prefill chunk by one slice."""
    total = int(query_start_loc[-1])
    request_of = np.repeat(np.arange(len(states)), query_lens)  # each token's request
    positions = starts[request_of] + np.arange(total) - query_start_loc[request_of]
    blocks = table[request_of, positions // block_size].astype(np.int64)
    slots = blocks * block_size + positions % block_size
    ids = np.zeros(total, dtype=np.int64)
    # Only the last token can be in flight, and only a decode computes it.
    in_flight = starts[:num_decodes] == known[:num_decodes]
    assert np.all(starts[:num_decodes] <= known[:num_decodes]), "a decode past its known tokens"
    assert np.all(pending[:num_decodes][in_flight] > 0), "a decode of a token not in flight"
    for i in np.flatnonzero(~in_flight).tolist():
        ids[i] = states[i].token_ids[starts[i]]
    for i in range(num_decodes, len(states)):
        start, end = int(starts[i]), int(starts[i] + query_lens[i])
        assert end <= known[i], "a prefill chunk past its known tokens"
        ids[query_start_loc[i] : query_start_loc[i + 1]] = states[i].token_ids[start:end]
    return ids, positions, slots, np.flatnonzero(in_flight)
