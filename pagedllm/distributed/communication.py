"""The collectives the model and the runner use, all through ``torch.distributed`` (gloo
wants contiguous CPU tensors). Callers only reach these when a size is above 1."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_reduce(x: torch.Tensor, group: Any) -> torch.Tensor:
    """The sum over the TP group (row-parallel outputs, vocab-parallel embeddings)."""
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def all_gather_last_dim(x: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """[..., n] on each rank -> [..., world * n], rank order (vocab-parallel logits)."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=-1)


def send(x: torch.Tensor, dst: int) -> None:
    dist.send(x.contiguous(), dst)


def recv(shape: tuple[int, ...], dtype: torch.dtype, src: int) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype)
    dist.recv(out, src)
    return out


def broadcast(x: torch.Tensor, src: int) -> torch.Tensor:
    """In place over every rank (the sampled tokens, from the output rank)."""
    dist.broadcast(x, src)
    return x
