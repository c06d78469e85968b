"""FP8 (e4m3) arithmetic of the quantized linear layers, in torch: what a scale means, how
weights and activations are quantized, and the two ways to multiply.

A quantized weight is ``q`` [out, in] in e4m3 and ``scale`` [out] float32, one per output
row: the weight it stands for is ``q * scale[:, None]``. Activations get one scale per
token (dynamic) or one for the tensor (static, from the checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
# The smallest scale: an all-zero row still divides by a positive number.
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)

Quantizer = Callable[[torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, in] in any float dtype -> (e4m3 [rows, in], float32 scales [rows]): each row
    scaled so its largest magnitude lands on 448."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=MIN_SCALE)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def quantize_rows_reference(
    x: torch.Tensor, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations x [tokens, n] -> (e4m3 [tokens, n], float32 scales [tokens, 1]); one scale
    per token (its amax / 448), or ``static_scale`` (one value) for all. The definition the
    CUDA kernel (``pagedllm.kernels.fp8_quant``) computes."""
    xf = x.float()
    if static_scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    else:
        scale = static_scale.float().reshape(1, 1).expand(x.shape[0], 1).contiguous()
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def tile_quantized_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    block_k: int,
) -> torch.Tensor:
    """What ``kernels.fp8_w8a8_matmul`` computes: x quantized to e4m3 per row and per slice
    of ``block_k`` columns (times 1 / scale, the slice's amax / 448), each slice's product
    with the e4m3 weights scaled back by its activation scales and summed in float32, then
    the weight scales and bias applied, in x's dtype."""
    xf = x.float()
    out = torch.zeros(x.shape[0], weight.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[1], block_k):
        piece = xf[:, start : start + block_k]
        piece_scale = (piece.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
        q = (piece * (1.0 / piece_scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float()
        out += (q @ weight[:, start : start + block_k].float().t()) * piece_scale
    out = out * scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def weight_only_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] = F.linear,
) -> torch.Tensor:
    """``x (q * scale)^T + b`` with x unquantized: q is widened to x's dtype inside the
    product (``linear``: the device's, ``DeviceOps.linear``) and the per-row scale applied
    to the output columns (``x q^T`` column j times ``scale[j]`` is ``x (q * scale)^T``
    column j), so no scaled weight is ever stored."""
    y = linear(x, weight.to(x.dtype), None)
    y = y * scale.to(x.dtype)
    return y if bias is None else y + bias


def scaled_mm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_row: torch.Tensor,
    act_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    quantize: Quantizer = quantize_rows_reference,
) -> torch.Tensor:
    """The same product on FP8 tensor cores: x quantized per token (or with the static
    ``act_scale``), then ``torch._scaled_mm`` with row-wise scales, output in x's dtype.
    ``scale_row``: the weight scales as [1, out]; weight [out, in] row-major is the
    column-major [in, out] operand the GEMM wants, so ``weight.t()`` is free."""
    xq, x_scale = quantize(x, act_scale)
    y = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=scale_row, out_dtype=x.dtype)
    return y if bias is None else y + bias
