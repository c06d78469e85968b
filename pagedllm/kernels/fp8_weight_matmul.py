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

Two kernels: up to ``GEMV_ROWS`` rows, a multiply-and-sum over [rows, BLOCK_N, BLOCK_K]
tiles (no tensor cores: a 16-row ``tl.dot`` tile would be mostly padding, and the layout
change it needs costs more than the arithmetic); up to ``MAX_ROWS``, ``tl.dot`` tiles.

Invariants: weight [N, K] row-major e4m3, scale [N] float32, x [M, K] with unit column
stride in bfloat16 or float16, bias (optional) [N] in x's dtype; y is a new [M, N] tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels import dependent_launch
from pagedllm.kernels.dependent_launch import await_inputs

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
def _gemv_tile(x_ptrs, w_ptrs, k, k_end, m_ok, n_ok, EVEN_K: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    """x [ROWS, BLOCK_K] and w [BLOCK_N, BLOCK_K] at k, widened to float32."""
    if EVEN_K:
        x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        k_ok = k + tl.arange(0, BLOCK_K) < k_end
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    return x.to(tl.float32), w.to(tl.float32)


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, k_split, stride_xm,
    ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr, REDUCE: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """UNROLL: tiles loaded before any is summed (more bytes in flight a program). REDUCE:
    sum each tile at once into [ROWS, BLOCK_N] (fewer registers, so more programs per SM)
    rather than once at the end."""
    await_inputs(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, ROWS)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * k_split + tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :]
    k_end = tl.minimum(pid_k * k_split + k_split, K)
    if REDUCE:
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((ROWS, BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k in range(pid_k * k_split, k_end, BLOCK_K * UNROLL):
        x, w = _gemv_tile(x_ptrs, w_ptrs, k, k_end, m_ok, n_ok, EVEN_K, BLOCK_K)
        if UNROLL == 2:  # the second tile may run past this split's end: masked
            x2, w2 = _gemv_tile(x_ptrs + BLOCK_K, w_ptrs + BLOCK_K, k + BLOCK_K, k_end, m_ok,
                                n_ok, False, BLOCK_K)  # fmt: skip
        if REDUCE:
            acc += tl.sum(w[None, :, :] * x[:, None, :], axis=2)
            if UNROLL == 2:
                acc += tl.sum(w2[None, :, :] * x2[:, None, :], axis=2)
        else:
            acc += w[None, :, :] * x[:, None, :]
            if UNROLL == 2:
                acc += w2[None, :, :] * x2[:, None, :]
        x_ptrs += BLOCK_K * UNROLL
        w_ptrs += BLOCK_K * UNROLL
    if REDUCE:  # noqa: SIM108 - a constexpr branch: each side compiles alone
        y = acc
    else:
        y = tl.sum(acc, axis=2)
    y = y * tl.load(s_ptr + rn, mask=n_ok, other=0.0)[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    if PARTIAL:  # float32 partial sums [split, M, N], added up by _sum_splits_kernel
        out_ptrs = out_ptr + (pid_k * M + rm[:, None]).to(tl.int64) * N + rn[None, :]
        tl.store(out_ptrs, y, mask=out_mask)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        out_ptrs = out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _sum_splits_kernel(
    part_ptr, b_ptr, y_ptr, total, SPLIT: tl.constexpr, N, HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    await_inputs(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    y = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        y += tl.load(part_ptr + s * total + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


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
        _gemv(x, weight, scale, bias, y, config or (GEMV_WIDE_CONFIG if wide else GEMV_CONFIG))
    else:
        _dot(x, weight, scale, bias, y, config or DOT_CONFIG)
    return y


def check_small_batch(x: torch.Tensor, weight: torch.Tensor, max_rows: int, name: str) -> None:
    """The small-batch kernels' inputs: x [M <= max_rows, K] in bfloat16/float16 with unit
    column stride, weight [N, K] contiguous."""
    if x.dim() != 2 or x.stride(1) != 1 or x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"x must be [M, K] bfloat16/float16 with unit column stride, got "
                         f"{x.dtype} {tuple(x.shape)}")  # fmt: skip
    if x.shape[0] > max_rows or weight.shape[1] != x.shape[1] or not weight.is_contiguous():
        raise ValueError(f"{name}: x {tuple(x.shape)}, weight {tuple(weight.shape)}")


def split_k(k: int, split: int, block_k: int) -> tuple[int, int]:
    """(each split's length, the number of splits) for ``split`` splits of K: each length a
    whole number of BLOCK_K steps (all splits but the last are full)."""
    k_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    return k_split, triton.cdiv(k, k_split)


def _gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    config: tuple[int, ...],
) -> None:
    block_n, block_k, warps, stages, split, unroll, reduce = (*config, 1, 0)[:7]
    (rows, k), n = x.shape, weight.shape[0]
    block_k = min(block_k, triton.next_power_of_2(k))
    padded_rows = triton.next_power_of_2(rows)
    # The accumulator [rows, BLOCK_N, BLOCK_K] stays within 128 float32 registers a thread.
    while not reduce and padded_rows * block_n * block_k > 128 * 32 * warps and block_k > 16:
        block_k //= 2
    k_split, split = split_k(k, split, block_k)
    partial = split > 1
    out = torch.empty((split, rows, n), dtype=torch.float32, device=x.device) if partial else y
    pdl = dependent_launch.enabled(x.device)
    _fp8_gemv_kernel[(triton.cdiv(n, block_n), split)](
        x, weight, scale, bias if bias is not None else scale, out, rows, n, k, k_split,
        x.stride(0), ROWS=padded_rows, HAS_BIAS=bias is not None,
        PARTIAL=partial, EVEN_K=k % block_k == 0, BLOCK_N=block_n, BLOCK_K=block_k,
        UNROLL=unroll, REDUCE=bool(reduce), num_warps=warps, num_stages=stages,
        PDL=pdl, **dependent_launch.options(pdl),
    )  # fmt: skip
    if partial:
        total = rows * n
        _sum_splits_kernel[(triton.cdiv(total, 1024),)](
            out, bias if bias is not None else out, y, total, SPLIT=split, N=n,
            HAS_BIAS=bias is not None, BLOCK=1024, num_warps=4,
            PDL=pdl, **dependent_launch.options(pdl),
        )  # fmt: skip


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
