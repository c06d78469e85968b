"""One row times e4m3 weights on packed half-precision instructions: a single stream's FP8
decode products (``y = x (q * scale[:, None])^T + b`` for x [1, K]).

Why: widening e4m3 weights to float32 (``kernels/gemv.py``) is bound by the conversions
(one quarter-rate float16 -> float32 conversion a weight), and the W8A8 tensor-core kernel
(``fp8_w8a8_matmul``) pays ~5 µs of fixed cost a product and rounds the activations to e4m3.
Here each 32-bit register holds four weights; one PTX block converts them two at a time
(``cvt.rn.f16x2.e4m3x2``), multiplies them with four float16 activations in two packed
instructions, adds the two halves and widens that one sum to float32: ~1.25 conversions per
four weights. On an H100 this took llama-3.1-8b's one-row products from 93.2 to 86.9 µs a
layer with half to a third of the W8A8 kernel's error, and W3 with FP8 weights from 3.96 to
3.67 ms a token (RESULTS.md, "One row times e4m3 weights on packed float16 instructions").

Range: each group of four activations (one DOT4) is divided by the power of two that brings
its largest magnitude below 2^X_MAX_LOG2 = 32 (exact: bfloat16's 8-bit significands fit float16's
11 above float16's subnormals), so a product is at most 448 x 32 and a sum of four stays
below float16's 65,504; the group's sum is scaled back in float32, and the output rows'
weight scales applied once at the end. The scale comes from the group's exponent bits in
the thread that holds it, so the loop has no reduction across threads.

Invariants: weight [N, K] row-major e4m3 with K % 64 == 0 (read as int32, four weights a
value); scale [N] float32; x [1, K] (``gated``: [1, 2K], gate then up, the input being
silu(gate) * up as the activation kernel computes it) in bfloat16/float16 with unit column
stride; bias [N] in x's dtype or None. Needs ``cvt.rn.f16x2.e4m3x2``: compute capability 8.9+.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from pagedllm.kernels import dependent_launch
from pagedllm.kernels.dependent_launch import await_inputs
from pagedllm.kernels.fused_ops import load_gated

# $1: four e4m3 weights (k0 in the low byte); $2, $3: float16 pairs (k0, k1) and (k2, k3),
# the lower k in the low half. $0: w0 x0 + w1 x1 + w2 x2 + w3 x3, in float32.
DOT4 = tl.constexpr("""{
.reg .b16 wlo, whi, slo, shi;
.reg .b32 w01, w23, p;
mov.b32 {wlo, whi}, $1;
cvt.rn.f16x2.e4m3x2 w01, wlo;
cvt.rn.f16x2.e4m3x2 w23, whi;
mul.rn.f16x2 p, w01, $2;
fma.rn.f16x2 p, w23, $3, p;
mov.b32 {slo, shi}, p;
add.rn.f16 slo, slo, shi;
cvt.f32.f16 $0, slo;
}""")
X_MAX_LOG2 = tl.constexpr(5)  # a group's largest activation is below 2^5 after its scale
# K tiles tried largest first; K must be a multiple of one of them.
BLOCK_KS = (2048, 1024, 512, 256, 128, 64)
TALL_N = 16384  # rows from which a layer takes TALL_BLOCK_K (config_for)
TALL_BLOCK_K = 512
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dot4(w, xa, xb, INTERPRETED: tl.constexpr):
    if INTERPRETED:  # the CPU interpreter runs no PTX: the same steps, each rounded to
        # float16 as the packed instructions round them (so a range error shows here too)
        lo = _half(_e4m3(w) * _f16(xa))
        hi = _half(_e4m3(w >> 8) * _f16(xa >> 16))
        lo = _half(_wide(_e4m3(w >> 16)) * _f16(xb) + lo)  # float64: the fma's one rounding
        hi = _half(_wide(_e4m3(w >> 24)) * _f16(xb >> 16) + hi)
        return _half(lo + hi)
    return tl.inline_asm_elementwise(
        DOT4, "=r,r,r,r", [w, xa, xb], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _wide(value):
    """``value`` in float64, where a product and sum of these operands are exact (they span
    at most 49 bits), so rounding that once to float16 is fma.rn's one rounding."""
    return value.to(tl.float64)


@triton.jit
def _half(value):
    """``value`` rounded to float16 (inf past its range), in float32."""
    return value.to(tl.float16).to(tl.float32)


@triton.jit
def _e4m3(bits):
    """The e4m3 value in the low byte of ``bits``, in float32."""
    return (bits & 0xFF).to(tl.int8).to(tl.float8e4nv, bitcast=True).to(tl.float32)


@triton.jit
def _f16(bits):
    """The float16 value in the low half of ``bits``, in float32."""
    return (bits & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _group_scale(x0, x1, x2, x3):
    """(s, 1 / s) for a group of four activations: the power of two with max |x| / s <
    2^X_MAX_LOG2 (= 32), from the exponent bits alone: no reduction across threads, each group has
    its own scale. Both are exact powers of two inside float32's normal range."""
    amax = tl.maximum(tl.maximum(tl.abs(x0), tl.abs(x1)), tl.maximum(tl.abs(x2), tl.abs(x3)))
    exponent = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased; 0 for 0 and tiny
    # max |x| < 2^(exponent - 126), so s = 2^(exponent - 126 - X_MAX_LOG2) gives
    # max |x| / s < 2^X_MAX_LOG2; clamped to 2^-126 .. 2^126, where s and 1 / s are normal
    e = tl.minimum(tl.maximum(exponent - (126 + X_MAX_LOG2), -126), 126)
    scale = ((e + 127) << 23).to(tl.float32, bitcast=True)
    inverse = ((127 - e) << 23).to(tl.float32, bitcast=True)
    return scale, inverse


@triton.jit
def _f16_pair(lo, hi):
    """Two values rounded to float16 in one int32 (lo in the low half), as DOT4 takes them."""
    lo_bits = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi_bits = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return lo_bits | (hi_bits << 16)


@triton.jit
def _groups(x_ptr, k, K, GATED: tl.constexpr, BLOCK_K: tl.constexpr):
    """The slice's activations at k in float32 (GATED: silu(gate) * up, up K on), loaded
    whole and split into the four of each group, [BLOCK_K // 4] each."""
    rk = tl.arange(0, BLOCK_K)
    if GATED:
        x = load_gated(x_ptr + k + rk, rk < BLOCK_K, K).to(tl.float32)
    else:
        x = tl.load(x_ptr + k + rk).to(tl.float32)
    # [g, a, b] holds k = 4g + 2a + b; tl.split takes the last axis
    even, odd = tl.split(tl.reshape(x, [BLOCK_K // 4, 2, 2]))
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _packed_gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr, PDL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Each group of four activations is scaled by its own power of two and the scaled
    float16 products are summed into a float32 tile: the loop holds no reduction across
    threads; the rows are summed once, after it."""
    await_inputs(PDL)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * (K // 4) + tl.arange(0, BLOCK_K // 4)[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K // 4], tl.float32)
    for k in range(0, K, BLOCK_K):  # K % BLOCK_K == 0: no K masks
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0)
        x0, x1, x2, x3 = _groups(x_ptr, k, K, GATED, BLOCK_K)
        scale, inverse = _group_scale(x0, x1, x2, x3)
        xa = _f16_pair(x0 * inverse, x1 * inverse)[None, :]
        xb = _f16_pair(x2 * inverse, x3 * inverse)[None, :]
        acc += _dot4(w, xa, xb, INTERPRETED) * scale[None, :]
        w_ptrs += BLOCK_K // 4
    y = tl.sum(acc, axis=1) * tl.load(s_ptr + rn, mask=n_ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def supported(x: torch.Tensor, weight: torch.Tensor, gated: bool = False) -> bool:
    """Whether ``packed_gemv`` takes x and weight: one row, unit column stride, an e4m3
    weight whose K a tile divides, starting on a 4-byte boundary (it is read as int32),
    x [1, K] (gated: [1, 2K])."""
    k = weight.shape[1]
    return (
        x.dim() == 2
        and x.shape[0] == 1
        and x.shape[1] == (2 * k if gated else k)
        and x.stride(1) == 1
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == torch.float8_e4m3fn
        and weight.is_contiguous()
        and weight.data_ptr() % 4 == 0
        and k % BLOCK_KS[-1] == 0
    )


def packed_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    gated: bool = False,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """``x (weight * scale[:, None])^T + bias`` for one row (``supported``); ``gated``: x is
    [gate | up] and the product's input silu(gate) * up. ``config`` (BLOCK_N, BLOCK_K,
    num_warps, num_stages): benchmarks only; the tuned tiles otherwise."""
    if not supported(x, weight, gated):
        raise ValueError(f"packed_gemv: x {x.dtype} {tuple(x.shape)}, weight {weight.dtype} "
                         f"{tuple(weight.shape)}, gated={gated}")  # fmt: skip
    n, k = weight.shape
    block_n, block_k, warps, stages = config or config_for(n, k)
    if k % block_k:
        raise ValueError(f"packed_gemv: BLOCK_K {block_k} does not divide K {k}")
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _packed_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight.view(torch.int32), scale, bias if bias is not None else scale, y, n, k,
        HAS_BIAS=bias is not None, GATED=gated, BLOCK_N=block_n, BLOCK_K=block_k,
        INTERPRETED=_INTERPRETED, num_warps=warps, num_stages=stages,
        **dependent_launch.launch_args(x.device),
    )  # fmt: skip
    return y


def config_for(n: int, k: int) -> tuple[int, int, int, int]:
    """The tiles for an [n, k] weight, from the H100 sweep of
    ``benchmarks/fp8_gemv_packed_probe.py`` at llama-3.1-8b's shapes (RESULTS.md, "Tiles of
    the packed product after the per-group scales"): 8-row strips and the longest K tile that
    divides K, except for layers of 16,384 rows or more (gate_up), whose 16-row strips take
    512 columns a step (the float32 sums are BLOCK_N x BLOCK_K / 4 values a program: the
    short tile keeps them few, and 1,792 such programs still fill the GPU)."""
    block_k = next(b for b in BLOCK_KS if k % b == 0)
    if n >= TALL_N and k % TALL_BLOCK_K == 0:
        return 16, TALL_BLOCK_K, 4, 3
    return 8, block_k, 4, 3
