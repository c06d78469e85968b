"""RMSNorm: ``x * rsqrt(mean(x^2) + eps) * weight``, accumulated in float32.

torch's fused ``rms_norm`` gives bit-identical float32 results to transformers' formula in
one kernel instead of six; for half types it scales in float32 before the final cast
(transformers casts first), a difference within one ulp of the result."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dim() == 2:
            from pagedllm.kernels.fused_ops import rms_norm

            return rms_norm(x, self.weight, self.eps)[0]
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def forward_residual(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x + residual`` normalized, and the sum itself (the next residual); one fused
        kernel on CUDA."""
        if x.is_cuda and x.dim() == 2:
            from pagedllm.kernels.fused_ops import rms_norm

            out, summed = rms_norm(x, self.weight, self.eps, residual)
            assert summed is not None
            return out, summed
        summed = x + residual
        return self.forward(summed), summed
