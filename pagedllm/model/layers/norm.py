"""RMSNorm: ``x * rsqrt(mean(x^2) + eps) * weight``, accumulated in float32.

torch's fused ``rms_norm`` gives bit-identical float32 results to transformers' formula in
one kernel instead of six; for half types it scales in float32 before the final cast
(transformers casts first), a difference within one ulp of the result. These are the
torch definitions; a CUDA model's layers run ``cuda_ops``' fused kernel instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from pagedllm.model.layers.device_ops import DeviceOps


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, weight.shape, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x + residual`` normalized, and the sum itself (the next residual)."""
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype, ops: DeviceOps) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), False)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)

    def forward_residual(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x + residual`` normalized, and the sum itself (the next residual); one fused
        kernel on CUDA."""
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)
