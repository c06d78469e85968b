"""The product of 16-bit activations with FP8 (e4m3) weights for small batches:
``y = x (q * scale[:, None])^T + b`` with q widened in registers.

Why: a decode step multiplies a few rows of activations by every weight of the model, so
it is bound by reading the weights. cuBLAS' FP8 GEMMs (``torch._scaled_mm``) tile the
output by 64-128 columns, which at one to a few dozen rows leaves most of an H200's SMs
idle (45% of the bandwidth on a 4096 x 4096 layer, slower than the bfloat16 product), and
quantizing the activations costs a kernel of its own. Here each program streams a narrow
strip of weight rows (and, for the narrow layers, a slice of their length: split-K), so
every SM has bytes in flight; the activations are read as they are. It computes what
``fp8.weight_only_linear`` defines, accumulating in float32.

Two kernels: up to ``GEMV_ROWS`` rows, ``kernels/gemv`` (a multiply-and-sum over [rows,
BLOCK_N, BLOCK_K] tiles: no tensor cores, as a 16-row ``tl.dot`` tile would be mostly
padding, and the layout change it needs costs more than the arithmetic); up to
``MAX_ROWS``, ``tl.dot`` tiles.

Invariants: weight [N, K] row-major e4m3, scale [N] float32, x [M, K] with unit column
stride in bfloat16 or float16, bias (optional) [N] in x's dtype; y is a new [M, N] tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels.gemv import check_small_batch, gemv

# (BLOCK_N, BLOCK_K, num_warps, num_stages, split_k[, unroll, reduce each tile]), from
# benchmarks/fp8_gemm.py --sweep at llama-8b's shapes on an H200 (RESULTS.md): one row,
# 8-row strips read 1 KiB at a time (splitting K or loading two tiles a step never helped);
# wide layers (gate_up, 28,672 rows) 16-row strips of 2 KiB summed at each tile, 12% faster
# there; 2-16 rows, tl.dot on 32-column strips, as fast at 16 rows as at 2.
GEMV_ROWS = 1
GEMV_CONFIG = (8, 1024, 4, 3, 1, 1, 0)
GEMV_WIDE_CONFIG = (16, 2048, 4, 3, 1, 1, 1)
GEMV_WIDE_ROWS = 16384
DOT_CONFIG = (32, 512, 4, 3, 1)
# The dot kernel beats cuBLAS' FP8 GEMM up to 16 rows and loses from 32 (its one row tile
# re-reads nothing, but its narrow strips cannot use the tensor cores well);
# FP8_GEMM_ROWS is where Fp8Linear hands over to _scaled_mm. Without FP8 tensor cores it
# serves up to MAX_ROWS rows: the torch fallback widens the whole weight each call.
FP8_GEMM_ROWS = 16
MAX_ROWS = 64
SHARED_MEMORY = 200 * 1024  # below Hopper's 227 KiB per block, with room for the epilogue


@triton.jit
def _fp8_dot_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
        else:
            k_ok = k + rk < K
            x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def fp8_weight_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, ...] | None = None,
    kernel: str | None = None,
) -> torch.Tensor:
    """``x (weight * scale[:, None])^T + bias`` for x [M, K] with M <= MAX_ROWS.

    Benchmarks only: ``config`` (BLOCK_N, BLOCK_K, num_warps, num_stages, split_k, unroll,
    reduce) overrides the tuned tiles (the last three apply to the GEMV kernel); ``kernel``
    ("gemv" or "dot") overrides the choice by rows."""
    check_small_batch(x, weight, MAX_ROWS, "fp8_weight_matmul")
    rows = x.shape[0]
    y = torch.empty((rows, weight.shape[0]), dtype=x.dtype, device=x.device)
    if kernel not in (None, "gemv", "dot"):
        raise ValueError(f"kernel must be 'gemv' or 'dot', got {kernel!r}")
    if kernel == "gemv" or (kernel is None and rows <= GEMV_ROWS):
        wide = weight.shape[0] >= GEMV_WIDE_ROWS
        gemv(x, weight, scale, bias, y, config or (GEMV_WIDE_CONFIG if wide else GEMV_CONFIG))
    else:
        _dot(x, weight, scale, bias, y, config or DOT_CONFIG)
    return y


def _dot(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    config: tuple[int, ...],
) -> None:
    block_n, block_k, warps, stages = config[:4]
    (rows, k), n = x.shape, weight.shape[0]
    block_m = max(16, triton.next_power_of_2(rows))  # tl.dot's smallest tile
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    # Each stage buffers an x tile (2 bytes) and a weight tile (1 byte) in shared memory.
    while stages > 2 and stages * block_k * (2 * block_m + block_n) > SHARED_MEMORY:
        stages -= 1
    while stages * block_k * (2 * block_m + block_n) > SHARED_MEMORY:
        block_k //= 2
    _fp8_dot_kernel[(triton.cdiv(n, block_n),)](
        x, weight, scale, bias if bias is not None else scale, y, rows, n, k, x.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
