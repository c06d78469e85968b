"""Random weights of the right shapes, for benchmarks without a checkpoint."""

from __future__ import annotations

import torch


def fill_dummy_weights(model: torch.nn.Module, seed: int, bound: float = 1e-3) -> None:
    """Uniform in [-bound, bound], reproducible from ``seed`` (tied weights filled once)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for param in model.parameters():  # shared parameters are yielded once
        values = torch.empty(param.shape, dtype=torch.float32).uniform_(
            -bound, bound, generator=generator
        )
        param.data.copy_(values)
