"""Token statistics for the penalties, kept on the device across steps.

Each request that uses a penalty gets a row (slot) in two tables: which tokens its prompt
holds, and how often it has generated each token. The prompt row is filled once; the
counts grow by one scatter per step from the sampled token ids still on the device, so a
step never rebuilds per-request histories on the host. Row 0 stays all zeros for requests
without penalties.
"""

from __future__ import annotations

import torch

from pagedllm.sample.metadata import PenaltyInputs
from pagedllm.worker.request_state import RequestState
from pagedllm.worker.sampling_inputs import to_device


class PenaltyState:
    def __init__(self, vocab_size: int, device: torch.device, capacity: int = 64) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.prompt_mask = torch.zeros(capacity, vocab_size, dtype=torch.bool, device=device)
        self.output_counts = torch.zeros(capacity, vocab_size, dtype=torch.float32, device=device)
        self.slots: dict[str, int] = {}
        self.free = list(range(capacity - 1, 0, -1))  # row 0: the neutral row

    def slot(self, state: RequestState) -> int:
        """The request's row, filled from its tokens the first time it is asked for."""
        found = self.slots.get(state.req_id)
        if found is not None:
            return found
        if not self.free:
            self._grow()
        row = self.free.pop()
        self.slots[state.req_id] = row
        ids = torch.tensor(state.prompt_token_ids, dtype=torch.int64).to(self.device)
        self.prompt_mask[row].zero_()
        self.prompt_mask[row, ids] = True
        counts = torch.bincount(
            torch.tensor(state.output_token_ids, dtype=torch.int64), minlength=self.vocab_size
        )
        self.output_counts[row] = counts[: self.vocab_size].to(self.device, torch.float32)
        return row

    def release(self, req_id: str) -> None:
        row = self.slots.pop(req_id, None)
        if row is not None:
            self.free.append(row)

    def inputs(self, states: list[RequestState]) -> PenaltyInputs:
        """Penalty inputs for the batch rows: the tables, and each row's slot (0 without
        penalties)."""
        rows = [self.slot(s) if s.sampling_params.uses_penalties else 0 for s in states]
        params = [s.sampling_params for s in states]
        slots = to_device(torch.tensor(rows, dtype=torch.int64), self.device)
        values = torch.tensor(
            [[p.presence_penalty, p.frequency_penalty, p.repetition_penalty] for p in params],
            dtype=torch.float32,
        )
        values = to_device(values, self.device)
        return PenaltyInputs(
            prompt_mask=self.prompt_mask,
            output_counts=self.output_counts,
            presence=values[:, 0],
            frequency=values[:, 1],
            repetition=values[:, 2],
            slots=slots,
        )

    def record(self, slots: torch.Tensor, sampled: torch.Tensor) -> None:
        """Count the step's sampled tokens (device tensors; rows with slot 0 are dropped)."""
        keep = slots != 0
        ones = keep.to(torch.float32)
        self.output_counts.index_put_((slots, sampled), ones, accumulate=True)

    def _grow(self) -> None:
        old = self.prompt_mask.shape[0]
        self.prompt_mask = torch.cat([self.prompt_mask, torch.zeros_like(self.prompt_mask)])
        self.output_counts = torch.cat([self.output_counts, torch.zeros_like(self.output_counts)])
        self.free = list(range(2 * old - 1, old - 1, -1))
