"""One row (or a few) times a weight matrix, for the decode steps of a single stream: each
program streams a narrow strip of weight rows (and, for narrow layers, a slice of their
length: split-K, summed by a second kernel), so every SM has bytes in flight while the
activations are read as they are. The weights are FP8 (e4m3, widened in registers, one
float32 scale per output row: ``fp8_weight_matmul``) or 16-bit (``dense_linear``, where it
beats cuBLAS at one row); the MLP's down projection may take its input before the
activation (``gated``).

Invariants: weight [N, K] row-major; x [M, K] (or [M, 2K] gated) with unit column stride in
bfloat16 or float16; scale (optional) [N] float32; bias (optional) [N] in x's dtype; y [M,
N] in x's dtype. Sums are in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels import dependent_launch
from pagedllm.kernels.dependent_launch import await_inputs
from pagedllm.kernels.fused_ops import load_gated


@triton.jit
def _gemv_tile(x_ptrs, w_ptrs, k, k_end, m_ok, n_ok, up_offset, EVEN_K: tl.constexpr,
               BLOCK_K: tl.constexpr, GATED: tl.constexpr):  # fmt: skip
    """x [ROWS, BLOCK_K] and w [BLOCK_N, BLOCK_K] at k, widened to float32; GATED: x is
    silu(gate) * up from rows [gate | up] (up ``up_offset`` columns on), as the activation
    kernel computes it (``load_gated``)."""
    if EVEN_K:
        x_ok = m_ok[:, None]
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        k_ok = k + tl.arange(0, BLOCK_K) < k_end
        x_ok = m_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    if GATED:  # noqa: SIM108 - a constexpr branch: each side compiles alone
        x = load_gated(x_ptrs, x_ok, up_offset)
    else:
        x = tl.load(x_ptrs, mask=x_ok, other=0.0)
    return x.to(tl.float32), w.to(tl.float32)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, k_split, stride_xm,
    ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr, REDUCE: tl.constexpr,
    HAS_SCALE: tl.constexpr, GATED: tl.constexpr, PDL: tl.constexpr,
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
        x, w = _gemv_tile(x_ptrs, w_ptrs, k, k_end, m_ok, n_ok, K, EVEN_K, BLOCK_K, GATED)
        if UNROLL == 2:  # the second tile may run past this split's end: masked
            x2, w2 = _gemv_tile(x_ptrs + BLOCK_K, w_ptrs + BLOCK_K, k + BLOCK_K, k_end, m_ok,
                                n_ok, K, False, BLOCK_K, GATED)  # fmt: skip
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
    if HAS_SCALE:
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


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    config: tuple[int, ...],
    gated: bool = False,
) -> None:
    """y = x (weight * scale[:, None])^T + bias (no scale: the weight as it is), summed in
    float32, for x [M, K] (``gated``: [M, 2K], the product's input silu(gate) * up).
    config: (BLOCK_N, BLOCK_K, num_warps, num_stages, split[, unroll, reduce])."""
    block_n, block_k, warps, stages, split, unroll, reduce = (*config, 1, 0)[:7]
    n, k = weight.shape
    rows = x.shape[0]
    block_k = min(block_k, triton.next_power_of_2(k))
    padded_rows = triton.next_power_of_2(rows)
    # The accumulator [rows, BLOCK_N, BLOCK_K] stays within 128 float32 registers a thread.
    while not reduce and padded_rows * block_n * block_k > 128 * 32 * warps and block_k > 16:
        block_k //= 2
    k_split, split = split_k(k, split, block_k)
    partial = split > 1
    out = torch.empty((split, rows, n), dtype=torch.float32, device=x.device) if partial else y
    launch = dependent_launch.launch_args(x.device)
    _gemv_kernel[(triton.cdiv(n, block_n), split)](
        x, weight, scale if scale is not None else y, bias if bias is not None else y, out,
        rows, n, k, k_split, x.stride(0), ROWS=padded_rows, HAS_BIAS=bias is not None,
        PARTIAL=partial, EVEN_K=k % block_k == 0, BLOCK_N=block_n, BLOCK_K=block_k,
        UNROLL=unroll, REDUCE=bool(reduce), HAS_SCALE=scale is not None, GATED=gated,
        num_warps=warps, num_stages=stages, **launch,
    )  # fmt: skip
    if partial:
        total = rows * n
        _sum_splits_kernel[(triton.cdiv(total, 1024),)](
            out, bias if bias is not None else out, y, total, SPLIT=split, N=n,
            HAS_BIAS=bias is not None, BLOCK=1024, num_warps=4,
            **launch,
        )  # fmt: skip


# (BLOCK_N, BLOCK_K, num_warps, num_stages, split[, unroll, reduce each tile]) for 16-bit
# weights at one row (benchmarks/gemv_probe.py on an H200: the best or within 1 µs of it at
# every llama-3.1-8b and qwen3-0.6b shape).
DENSE_CONFIG = (8, 1024, 4, 3, 1, 1, 0)
# Layers wider than this (LM heads: 128k-152k rows) stay on cuBLAS, at the copy rate there.
DENSE_MAX_ROWS = 32768
# The gated form computes silu(gate) * up in each of its n / 8 programs: at 1,024 outputs
# that costs less than the activation kernel it replaces, at 4,096 more (RESULTS.md).
GATED_MAX_ROWS = 2048


def dense_preferred(n: int, k: int, gated: bool = False) -> bool:
    """Whether ``dense_linear`` beats cuBLAS (and, gated, the activation kernel then the
    GEMV) for one row of an [n, k] 16-bit weight on an H200 (RESULTS.md "Dependent
    launches and the one-row GEMV on 16-bit weights"): every layer of llama-3.1-8b and
    qwen3-0.6b read faster (0.6b's o_proj 2.4 µs against cuBLAS' 12.5), up to
    DENSE_MAX_ROWS outputs."""
    return n <= (GATED_MAX_ROWS if gated else DENSE_MAX_ROWS) and k >= 16


def dense_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gated: bool = False
) -> torch.Tensor:
    """``x weight^T + bias`` for one row x [1, K] (``gated``: [1, 2K], silu(gate) * up
    taken as the input) and a 16-bit weight [N, K]."""
    n, k = weight.shape
    check_small_batch(x[:, :k] if gated else x, weight, 1, "dense_linear")
    if (gated and x.shape[1] != 2 * k) or weight.dtype != x.dtype:
        raise ValueError(f"dense_linear: x {x.dtype} {tuple(x.shape)}, weight "
                         f"{weight.dtype} {tuple(weight.shape)}, gated={gated}")  # fmt: skip
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    gemv(x, weight, None, bias, y, DENSE_CONFIG, gated)
    return y
