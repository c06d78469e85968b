"""This process's place in the tensor x pipeline grid, and its process groups.

Ranks are laid out stage by stage: global rank = pp_rank * tp_size + tp_rank, so the ranks
of one pipeline stage form a TP group and rank ``(pp_size - 1) * tp_size`` (the first rank
of the last stage) is the output rank, whose sampled tokens the executor reports.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelParallel:
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    # The ProcessGroup of this rank's TP peers; None when tp_size == 1 (no collectives).
    tp_group: Any = None

    @property
    def rank(self) -> int:
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def output_rank(self) -> int:
        return output_rank(self.tp_size, self.pp_size)

    def stage_rank(self, pp_rank: int) -> int:
        """The global rank of this rank's TP peer in another stage (its p2p partner)."""
        return pp_rank * self.tp_size + self.tp_rank


def output_rank(tp_size: int, pp_size: int) -> int:
    return (pp_size - 1) * tp_size


def init_model_parallel(
    rank: int, tp_size: int, pp_size: int, init_method: str, timeout_s: float
) -> ModelParallel:
    """Join the process group (gloo: CPU tensors) and make the TP groups. Every rank makes
    every group, in the same order (``new_group`` is collective). ``timeout_s`` bounds
    every collective and point-to-point op: a peer that died fails them instead of
    hanging them."""
    import torch.distributed as dist

    world = tp_size * pp_size
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world, timeout=timeout
    )
    pp_rank, tp_rank = divmod(rank, tp_size)
    tp_group = None
    for stage in range(pp_size):
        ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
        group = dist.new_group(ranks, timeout=timeout) if tp_size > 1 else None
        if stage == pp_rank:
            tp_group = group
    return ModelParallel(tp_rank, tp_size, pp_rank, pp_size, tp_group)
