"""Single-file and sharded safetensors checkpoints. With tensor or pipeline parallelism
(``plan``), each rank reads only its slice of each tensor (safetensors' lazy slices read
just those bytes) and skips the tensors of other stages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pagedllm.model.sharding import SKIP, Region, ShardPlan


def iter_safetensors_weights(
    files: Sequence[Path], plan: ShardPlan | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if plan is None:
                    yield name, f.get_tensor(name)
                    continue
                piece = f.get_slice(name)
                region = plan.region(name, tuple(piece.get_shape()))
                if region == SKIP:
                    continue
                yield name, f.get_tensor(name) if region is None else read_region(piece, region)


def read_region(piece: Any, region: Region | str) -> torch.Tensor:
    """The rows (dim 0) or columns (dim 1) of a lazily read tensor."""
    assert isinstance(region, Region)
    index: list[slice] = [slice(None)] * len(piece.get_shape())
    index[region.dim] = slice(region.start, region.start + region.length)
    return piece[tuple(index)]
