"""Vocab-parallel embedding and LM head: each TP rank holds ``ceil(vocab / tp)`` rows (the
last rank's tail past the vocabulary is zeros), as vLLM's ``VocabParallelEmbedding``.

The embedding looks up the ids in its range and zeroes the rest; one all-reduce sums the
ranks (exact: one rank contributes each row, the others add zeros). The LM head's logits
are all-gathered so every rank of the group samples the same tokens from the same logits
(as vLLM V1 does): each keeps the request states it needs for the next step's inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed.communication import all_gather_last_dim, all_reduce
from pagedllm.distributed.parallel_state import ModelParallel

if TYPE_CHECKING:
    from pagedllm.model.layers.device_ops import DeviceOps


class VocabParallelEmbedding(nn.Module):
    def __init__(
        self, vocab_size: int, hidden_size: int, dtype: torch.dtype, parallel: ModelParallel
    ) -> None:
        super().__init__()
        self.per_rank = -(-vocab_size // parallel.tp_size)
        self.start = parallel.tp_rank * self.per_rank
        self.group = parallel.tp_group
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden_size, dtype=dtype), False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(x.masked_fill(outside.unsqueeze(-1), 0), self.group)

    def load_shard(self, loaded: torch.Tensor, name: str) -> None:
        """This rank's rows of the checkpoint's table (fewer on the last rank)."""
        rows = loaded.shape[0]
        if rows > self.per_rank or loaded.shape[1:] != self.weight.shape[1:]:
            raise ValueError(
                f"Checkpoint tensor {name!r} slice of shape {tuple(loaded.shape)} does not fit "
                f"the vocab-parallel shard of shape {tuple(self.weight.shape)}."
            )
        self.weight.data[rows:].zero_()
        self.weight.data[:rows].copy_(loaded)


class ParallelLMHead(VocabParallelEmbedding):
    """Hidden states -> logits over the whole vocabulary in the model's dtype, on every TP
    rank (not widened: see ``embedding.LMHead``)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        dtype: torch.dtype,
        parallel: ModelParallel,
        ops: DeviceOps,
    ) -> None:
        super().__init__(vocab_size, hidden_size, dtype, parallel)
        self.ops = ops
        self.vocab_size = vocab_size
        self.tp_size = parallel.tp_size

    def tie(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        local = self.ops.linear(hidden, self.weight, None)
        logits = all_gather_last_dim(local, self.group, self.tp_size)
        return logits[:, : self.vocab_size].contiguous()
