"""Random weights of the right shapes, for benchmarks without a checkpoint."""

from __future__ import annotations

import torch


def fill_dummy_weights(model: torch.nn.Module, seed: int, bound: float = 1e-3) -> None:
    """Uniform in [-bound, bound], reproducible from ``seed`` on a given device (tied weights
    filled once). Filled where the parameters live: an 8B model fills in milliseconds on a
    GPU rather than tens of seconds through the CPU."""
    generator: torch.Generator | None = None
    for param in model.parameters():  # shared parameters are yielded once
        if generator is None:
            generator = torch.Generator(device=param.device).manual_seed(seed)
        param.data.uniform_(-bound, bound, generator=generator)
