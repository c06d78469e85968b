"""RMSNorm on the CPU in one pass per row (``pagedllm/csrc/rms_norm_cpu.cpp``, built by
``cpu_extension``), for float32 rows whose length is a multiple of 8 (``supports``); the
residual form adds first and returns the sum as well."""

from __future__ import annotations

import torch

from pagedllm.kernels import cpu_extension


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.shape[-1] % 8 == 0
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    return cpu_extension.module().rms_norm(rows, weight, eps).view(x.shape)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual)."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1]).contiguous()
    residual_rows = residual.reshape(-1, shape[-1]).contiguous()
    out, summed = cpu_extension.module().add_rms_norm(rows, residual_rows, weight, eps)
    return out.view(shape), summed.view(shape)
