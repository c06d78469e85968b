"""FP8 weights times FP8 activations on tensor cores for small batches (1-16 rows), in one
kernel: ``y = x (q * scale[:, None])^T + b``.

Why: a decode step reads every weight once, so it is bound by the weight bytes. Widening
e4m3 weights in registers (``fp8_weight_matmul``) is bound by the conversion instructions
(2.4-3.0 TB/s on an H200, RESULTS.md "FP8 GEMV: what bounds it"); ``tl.dot`` on e4m3
operands reads the bytes as stored. That needs e4m3 activations, and a separate quantize
kernel, zeroed split-K buffer and cast cost as much as the product saves at one row
(RESULTS.md "Whether big GEMMs hold the host, and the W8A8 pipeline"). So this kernel
quantizes its own activation tiles and finishes its own split-K sums:

- Activations are quantized per row and per ``BLOCK_K`` slice (the slice's amax / 448) as
  each tile is loaded, and each tile's product is scaled back into a float32 accumulator.
  Finer than one scale per row, and every program needs only the slices it reads.
- Split-K: the ``SPLIT`` programs of a column strip store float32 partial sums; the last to
  finish (a counter per strip, bumped after a barrier) adds them up, applies the weight
  scales and bias and writes ``y``, then resets its counter to 0 for the next call (so the
  counters, zeroed once per device, stay valid across CUDA-graph replays).

- The MLP's down projection may take its input before the activation (``gated``): each
  program computes silu(gate) * up on the slices it loads, so the activation kernel and its
  output tensor drop out of a decode step's layer.

Invariants: weight [N, K] row-major e4m3 (``torch.float8_e4m3fn``), scale [N] float32, x
[M, K] bfloat16/float16 with unit column stride and M <= MAX_ROWS, bias [N] in x's dtype or
None; y is a new [M, N] tensor in x's dtype. Calls that share a device run one after another
(one stream): the strip counters are shared.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels import dependent_launch, fp8_packed_gemv, fused_ops
from pagedllm.kernels.dependent_launch import await_inputs
from pagedllm.kernels.fp8_weight_matmul import fp8_weight_matmul
from pagedllm.kernels.fused_ops import load_gated
from pagedllm.kernels.gemv import check_small_batch, split_k

MAX_ROWS = 16  # one tl.dot row tile; larger batches go to torch._scaled_mm
FP8_MAX = tl.constexpr(448.0)
# A slice of zeros still divides by a positive scale (the weight quantizer's floor).
MIN_SCALE = tl.constexpr(1.0 / (448.0 * 512.0))
# (BLOCK_N, BLOCK_K, num_warps, num_stages, split) by layer shape, from the H200 sweep of
# benchmarks/fp8_w8a8_probe.py at llama-3.1-8b's shapes (RESULTS.md, "The fused W8A8
# kernel's tiles"): wide layers (gate_up, 28,672 rows) fill the SMs with 128-row strips
# unsplit; the others split K four ways, the long-K (down, 14,336) with 256-column tiles.
WIDE_CONFIG = (128, 128, 4, 4, 1)
LONG_K_CONFIG = (64, 128, 4, 4, 8)
SQUARE_CONFIG = (64, 128, 4, 3, 8)
DEFAULT_CONFIG = (64, 128, 4, 3, 4)
# One row (a single stream's decode, ONE_ROW): 256-column tiles throughout (third sweep;
# 128-column ones lost 10-25% there), 128-row strips but for the narrow qkv-like layers.
ONE_ROW_WIDE_CONFIG = (128, 256, 4, 3, 1)
ONE_ROW_LONG_K_CONFIG = (128, 256, 4, 4, 4)
ONE_ROW_CONFIG = (64, 256, 4, 3, 4)
WIDE_ROWS = 16384
LONG_K = 8192
# At one row, weights of up to 4096 x 4096 (o_proj) run faster widened (8.7 against 9.5
# µs): the per-slice quantization's fixed cost is not paid back by so few weight bytes.
SMALL_WEIGHT = 4096 * 4096
# Strip counters per device, allocated once and never replaced: a captured CUDA graph holds
# their address. 65,536 strips of >= 32 columns cover any layer up to 2M outputs.
COUNTERS = 1 << 16
_counters: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _w8a8_kernel(
    x_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, part_ptr, count_ptr, M, N, K, k_split, stride_xm,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr, ONE_ROW: tl.constexpr,
    GATED: tl.constexpr, PDL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    await_inputs(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    k_start = pid_k * k_split
    k_end = tl.minimum(k_start + k_split, K)
    if ONE_ROW:
        x_ptrs = x_ptr + k_start + rk
    else:
        x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + (k_start + rk)[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * K + (k_start + rk)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        k_ok = k + rk < k_end
        if EVEN_K:
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
        else:
            w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if ONE_ROW:
            # A decode's one row: quantize it alone and place it in the tile's first row
            # (zeros below, as bytes), not the 15 rows of padding the tile needs too.
            xf = _activation(x_ptrs + k - k_start, k_ok, K, GATED)
            x_scale = tl.maximum(tl.max(tl.abs(xf), axis=0) / FP8_MAX, MIN_SCALE)
            row = (xf * (1.0 / x_scale)).to(tl.float8e4nv).to(tl.int8, bitcast=True)
            tile = tl.where(rm[:, None] == 0, row[None, :], tl.zeros((BLOCK_M, BLOCK_K), tl.int8))
            acc += tl.dot(tile.to(tl.float8e4nv, bitcast=True), tl.trans(w)) * x_scale
        else:
            if EVEN_K:  # noqa: SIM108 - a constexpr branch: each side compiles alone
                x_ok = m_ok[:, None]
            else:
                x_ok = m_ok[:, None] & k_ok[None, :]
            xf = _activation(x_ptrs, x_ok, K, GATED)
            x_scale = tl.maximum(tl.max(tl.abs(xf), axis=1) / FP8_MAX, MIN_SCALE)
            # One division a row, a multiplication a value (a division costs several).
            xq = (xf * (1.0 / x_scale)[:, None]).to(tl.float8e4nv)
            acc += tl.dot(xq, tl.trans(w)) * x_scale[:, None]
            x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if SPLIT > 1:
        # Partial sums [SPLIT, BLOCK_M, N]; every thread's stores precede the counter's bump
        # (the barrier), and the bump releases them to the program that sees SPLIT - 1.
        part_ptrs = part_ptr + (pid_k * BLOCK_M + rm[:, None]).to(tl.int64) * N + rn[None, :]
        tl.store(part_ptrs, acc, mask=n_ok[None, :], cache_modifier=".wt")
        tl.debug_barrier()
        done = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if done == SPLIT - 1:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT):
                ptrs = part_ptr + (s * BLOCK_M + rm[:, None]).to(tl.int64) * N + rn[None, :]
                acc += tl.load(ptrs, mask=n_ok[None, :], other=0.0, cache_modifier=".cg")
            _finish(acc, ws_ptr, b_ptr, y_ptr, rm, rn, m_ok, n_ok, N, HAS_BIAS)
            tl.atomic_xchg(count_ptr + pid_n, 0)
    else:
        _finish(acc, ws_ptr, b_ptr, y_ptr, rm, rn, m_ok, n_ok, N, HAS_BIAS)


@triton.jit
def _activation(ptrs, mask, up_offset, GATED: tl.constexpr):
    """x's values in float32; GATED: silu(gate) * up from rows [gate | up] (up at
    ``up_offset`` columns), as the activation kernel computes it (``load_gated``)."""
    if GATED:  # noqa: SIM108 - a constexpr branch: each side compiles alone
        x = load_gated(ptrs, mask, up_offset)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _finish(acc, ws_ptr, b_ptr, y_ptr, rm, rn, m_ok, n_ok, N, HAS_BIAS: tl.constexpr):
    """y = acc * weight scales (+ bias), in y's dtype."""
    acc = acc * tl.load(ws_ptr + rn, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def w8a8_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int, int] | None = None,
    gated: bool = False,
) -> torch.Tensor:
    """``x (weight * scale[:, None])^T + bias`` for x [M, K], M <= MAX_ROWS, with x quantized
    to e4m3 per row and ``BLOCK_K`` slice. ``gated``: x is [M, 2K], gate then up, and the
    product's input is silu(gate) * up (the MLP's activation, fused). ``config`` (BLOCK_N,
    BLOCK_K, num_warps, num_stages, split): benchmarks only; the tuned tiles otherwise."""
    n, k = weight.shape
    if gated and (x.dim() != 2 or x.shape[1] != 2 * k):
        raise ValueError(f"w8a8_matmul: gated x must be [M, {2 * k}], got {tuple(x.shape)}")
    check_small_batch(x[:, :k] if gated else x, weight, MAX_ROWS, "w8a8_matmul")
    rows = x.shape[0]
    block_n, block_k, warps, stages, split = config or config_for(n, k, rows)
    block_k = min(block_k, max(32, triton.next_power_of_2(k)))
    k_split, split = split_k(k, split, block_k)
    strips = triton.cdiv(n, block_n)
    y = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    part = y
    if split > 1:
        part = torch.empty((split, MAX_ROWS, n), dtype=torch.float32, device=x.device)
    _w8a8_kernel[(strips, split)](
        x, weight, scale, bias if bias is not None else scale, y, part,
        strip_counters(x.device, strips), rows, n, k, k_split, x.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, SPLIT=split, ONE_ROW=rows == 1,
        GATED=gated, BLOCK_M=MAX_ROWS,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
        **dependent_launch.launch_args(x.device),
    )  # fmt: skip
    return y


def config_for(n: int, k: int, rows: int) -> tuple[int, int, int, int, int]:
    """The tiles for ``rows`` rows of an [n, k] weight."""
    if rows == 1:
        if n >= WIDE_ROWS:
            return ONE_ROW_WIDE_CONFIG
        return ONE_ROW_LONG_K_CONFIG if k >= LONG_K else ONE_ROW_CONFIG
    if n >= WIDE_ROWS:
        return WIDE_CONFIG
    if k >= LONG_K:
        return LONG_K_CONFIG
    return SQUARE_CONFIG if n * k <= SMALL_WEIGHT else DEFAULT_CONFIG


def preferred(rows: int, n: int, k: int) -> bool:
    """Whether this kernel beats widening the weights (``fp8_weight_matmul``) for ``rows``
    rows of an [n, k] weight on an H200 (benchmarks/fp8_w8a8_probe.py, RESULTS.md)."""
    return rows <= MAX_ROWS and (rows > 1 or n * k > SMALL_WEIGHT)


def small_batch_matmul(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The small-batch FP8 product of layers whose scheme quantizes activations: one row on
    packed float16 instructions (``fp8_packed_gemv``: faster at three of llama-3.1-8b's four
    layer shapes and as fast at the fourth, and closer to the exact product, its activations
    not rounded to e4m3), more rows on FP8 tensor cores here where this kernel is faster,
    the widening one otherwise."""
    if fp8_packed_gemv.supported(x, weight):
        return fp8_packed_gemv.packed_gemv(x, weight, scale, bias)
    if preferred(x.shape[0], *weight.shape):
        return w8a8_matmul(x, weight, scale, bias)
    return fp8_weight_matmul(x, weight, scale, bias)


def small_batch_gated_matmul(
    gate_up: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``small_batch_matmul(silu(gate) * up, ...)`` for gate_up [M, 2K]. One row: the
    activation inside the product's loads (one kernel and no [1, K] tensor between them: one
    kernel fewer a layer in a single stream's step), packed where it takes the weight, this
    kernel's one-row path otherwise. Several rows: the activation kernel first, because the
    fused form would compute silu(gate) * up for every row of the 16-row tile in each of its
    column strips (64 strips x 16 x 14,336 values for llama-3.1-8b's down_proj, the
    redundancy that made the 16-bit GEMV's gated form slower at 4,096 outputs) and that is
    not measured yet."""
    if fp8_packed_gemv.supported(gate_up, weight, gated=True):
        return fp8_packed_gemv.packed_gemv(gate_up, weight, scale, bias, gated=True)
    if gate_up.shape[0] == 1 and preferred(1, *weight.shape):
        return w8a8_matmul(gate_up, weight, scale, bias, gated=True)
    return small_batch_matmul(fused_ops.silu_and_mul(gate_up), weight, scale, bias)


def strip_counters(device: torch.device, strips: int) -> torch.Tensor:
    """The device's split-K counters, zero between calls, allocated and zeroed on the first
    eager call. Not inside a CUDA graph's capture: there the zeroing would only be recorded,
    not run, and the first calls would find whatever the memory held (the engine's
    captures run each graph's step eagerly first)."""
    if strips > COUNTERS:
        raise ValueError(f"w8a8_matmul: {strips} column strips, more than {COUNTERS}")
    counters = _counters.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("w8a8_matmul: run it once eagerly before capturing it in a "
                               "CUDA graph (its split-K counters are zeroed then)")  # fmt: skip
        counters = _counters[device] = torch.zeros(COUNTERS, dtype=torch.int32, device=device)
    return counters
