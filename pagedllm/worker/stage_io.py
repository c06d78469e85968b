"""What crosses between pipeline stages in one step, over torch.distributed point-to-point
and one broadcast. Invariant: every rank builds the same batch from the same scheduler
output, so sizes are known on both sides and never sent.

    stage s  --(hidden states and residual, [2, tokens, hidden])-->  stage s + 1
    output rank (first rank of the last stage)  --(sampled token ids)-->  every rank

Rank r sends to and receives from its TP peer of the neighbouring stage (same TP rank).
With one micro-batch in flight nothing overlaps: a stage waits while the others compute.
"""

from __future__ import annotations

import torch

from pagedllm.distributed.communication import broadcast, recv, send
from pagedllm.distributed.parallel_state import ModelParallel


class StageIO:
    def __init__(self, parallel: ModelParallel, hidden_size: int, dtype: torch.dtype) -> None:
        self.parallel = parallel
        self.hidden_size = hidden_size
        self.dtype = dtype

    def receive_activations(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The previous stage's hidden states and residual (None on the first stage)."""
        p = self.parallel
        if p.is_first_stage:
            return None
        both = recv((2, num_tokens, self.hidden_size), self.dtype, p.stage_rank(p.pp_rank - 1))
        return both[0], both[1]

    def send_activations(self, both: torch.Tensor) -> None:
        p = self.parallel
        send(both, p.stage_rank(p.pp_rank + 1))

    def share_tokens(self, token_ids: torch.Tensor) -> None:
        """Last stage: the sampled ids, from the output rank to every rank."""
        broadcast(token_ids, self.parallel.output_rank)

    def receive_tokens(self, num_rows: int) -> torch.Tensor:
        return broadcast(torch.empty(num_rows, dtype=torch.int64), self.parallel.output_rank)
