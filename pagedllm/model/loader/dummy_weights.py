"""Random weights of the right shapes, for benchmarks without a checkpoint."""

from __future__ import annotations

import torch


def fill_dummy_weights(model: torch.nn.Module, seed: int, bound: float = 1e-3) -> None:
    """Uniform in [-bound, bound], reproducible from ``seed`` on a given device (tied weights
    filled once). Filled where the parameters live: an 8B model fills in milliseconds on a
    GPU rather than tens of seconds through the CPU. Layers that store weights in another
    form (FP8) fill themselves (``fill_random``), from full-precision random values."""
    params = list(model.parameters())  # shared parameters are yielded once
    if not params:
        return
    generator = torch.Generator(device=params[0].device).manual_seed(seed)
    own: set[int] = set()
    for module in model.modules():
        fill = getattr(module, "fill_random", None)
        if fill is not None:
            fill(generator, bound)
            own.update(id(p) for p in module.quantized_parameters())
    for param in params:
        if id(param) not in own:
            param.data.uniform_(-bound, bound, generator=generator)
