"""FP8 (e4m3) quantization of activations, one scale per row (token), in one kernel: the
input side of an FP8 tensor-core GEMM. A decode step quantizes the input of every linear
layer; four torch ops per layer would be hundreds of extra kernels per step.

It computes exactly ``pagedllm.model.layers.fp8.quantize_rows_reference``: ``scale =
max(amax(|row|) / 448, MIN_SCALE)`` (or the given static scale) and ``q = clamp(row /
scale, -448, 448)`` rounded to e4m3.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.model.layers.fp8 import FP8_DTYPE, FP8_MAX, MIN_SCALE


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, static_ptr, n, stride_x,
    FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, STATIC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x_row = x_ptr + row * stride_x
    if STATIC:
        scale = tl.load(static_ptr)
    else:
        amax = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n, BLOCK):
            x = tl.load(x_row + start + cols, mask=start + cols < n, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.max(amax, axis=0) / FP8_MAX, MIN_SCALE)
    tl.store(s_ptr + row, scale)
    q_row = q_ptr + row * n
    for start in range(0, n, BLOCK):
        ok = start + cols < n
        x = tl.load(x_row + start + cols, mask=ok, other=0.0).to(tl.float32)
        q = tl.clamp(x / scale, -FP8_MAX, FP8_MAX)
        tl.store(q_row + start + cols, q.to(q_ptr.dtype.element_ty), mask=ok)


def quantize_rows(
    x: torch.Tensor, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [rows, n] (rows contiguous) -> (q [rows, n] e4m3, scales [rows, 1] float32).
    ``static_scale``: one float32 value used for every row instead of the row's own."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_rows needs [rows, n] with contiguous rows, got {x.shape}")
    if static_scale is not None and (
        static_scale.numel() != 1 or static_scale.dtype != torch.float32
    ):
        raise ValueError("static_scale must be one float32 value")
    rows, n = x.shape
    q = torch.empty((rows, n), dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    block = min(triton.next_power_of_2(n), 2048)
    static = scales if static_scale is None else static_scale  # unread without STATIC
    _quantize_rows_kernel[(rows,)](
        x, q, scales, static, n, x.stride(0),
        FP8_MAX=FP8_MAX, MIN_SCALE=MIN_SCALE, STATIC=static_scale is not None, BLOCK=block,
        num_warps=4 if block <= 1024 else 8,
    )  # fmt: skip
    return q, scales
