"""A probe for issue 14's W3: one row times e4m3 weights on packed half-precision
instructions, against the package's one-row FP8 products.

Why: the widening GEMV (``kernels/gemv.py``) is bound by its conversions (RESULTS.md "FP8
GEMV: what bounds it": Triton widens each e4m3 value to float32 through float16, one
quarter-rate conversion a value), and the W8A8 kernel loses ~5 µs a product to its fixed
costs (RESULTS.md "One-row products: a wider tile sweep"). Here each 32-bit register holds
four weights; one inline-PTX block per register converts them two at a time
(``cvt.rn.f16x2.e4m3x2``), multiplies them with four activations in two packed
instructions (``mul``/``fma.rn.f16x2``), adds the halves and widens that one sum: ~1.25
conversions per four weights instead of eight.

Range: each ``BLOCK_K`` slice of activations is divided by a power of two that brings its
largest magnitude to at most 32 (exact: bfloat16's 8-bit significands fit float16's 11),
so a product is at most 448 x 32 and four of them stay below float16's 65,504; the slice's
sum is scaled back in float32.

    python benchmarks/fp8_gemv_packed_probe.py   # CUDA, compute capability 8.9+
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

from pagedllm.kernels import dependent_launch
from pagedllm.kernels.dependent_launch import await_inputs
from pagedllm.kernels.fused_ops import load_gated

# $1: four e4m3 weights (k0 in the low byte); $2, $3: float16 pairs (k0, k1), (k2, k3), the
# lower k in the low half. $0: w0 x0 + w1 x1 + w2 x2 + w3 x3 in float32.
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
X_MAX = tl.constexpr(32.0)  # a slice's largest activation after its power-of-two scale


@triton.jit
def _dot4(w, xa, xb, INTERPRETED: tl.constexpr):
    if INTERPRETED:  # the CPU interpreter runs no PTX: the same sum, unpacked, in float32
        out = _e4m3(w) * _f16(xa) + _e4m3(w >> 8) * _f16(xa >> 16)
        return out + _e4m3(w >> 16) * _f16(xb) + _e4m3(w >> 24) * _f16(xb >> 16)
    return tl.inline_asm_elementwise(
        DOT4, "=r,r,r,r", [w, xa, xb], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _e4m3(bits):
    """The e4m3 value in the low byte of ``bits``, in float32."""
    return (bits & 0xFF).to(tl.int8).to(tl.float8e4nv, bitcast=True).to(tl.float32)


@triton.jit
def _f16(bits):
    """The float16 value in the low half of ``bits``, in float32."""
    return (bits & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def f16_pairs(x, BLOCK_K: tl.constexpr):
    """x [BLOCK_K] float16 -> (xa, xb) [BLOCK_K // 4] int32: the float16 pairs of k = 4g, 4g+1
    and of 4g+2, 4g+3 (the lower k in the low half)."""
    bits = x.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    lo, hi = tl.split(tl.reshape(bits, [BLOCK_K // 2, 2]))
    pairs = lo | (hi << 16)
    return tl.split(tl.reshape(pairs, [BLOCK_K // 4, 2]))


@triton.jit
def _packed_gemv_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, N, K,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GATED: tl.constexpr, PDL: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    await_inputs(PDL)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rk = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * (K // 4) + tl.arange(0, BLOCK_K // 4)[None, :]
    acc = tl.zeros([BLOCK_N], tl.float32)
    for k in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0)
        if GATED:
            xf = load_gated(x_ptr + k + rk, rk < BLOCK_K, K).to(tl.float32)
        else:
            xf = tl.load(x_ptr + k + rk).to(tl.float32)
        amax = tl.max(tl.abs(xf), axis=0)
        scale = tl.exp2(tl.ceil(tl.log2(tl.maximum(amax, 1e-30) / X_MAX)))
        xa, xb = f16_pairs((xf / scale).to(tl.float16), BLOCK_K)
        acc += tl.sum(_dot4(w, xa[None, :], xb[None, :], INTERPRETED), axis=1) * scale
        w_ptrs += BLOCK_K // 4
    y = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def packed_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    config: tuple[int, int, int, int] = (8, 1024, 4, 3),
    gated: bool = False,
) -> torch.Tensor:
    """x [1, K] (gated: [1, 2K]) bfloat16/float16 times weight [N, K] e4m3 with scale [N]."""
    n, k = weight.shape
    block_n, block_k, warps, stages = config
    if k % block_k or weight.dtype != torch.float8_e4m3fn or x.shape[0] != 1:
        raise ValueError(f"packed_gemv: x {tuple(x.shape)}, weight {weight.dtype} {(n, k)}")
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _packed_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight.view(torch.int32), scale, y, n, k,
        BLOCK_N=block_n, BLOCK_K=block_k, GATED=gated, num_warps=warps, num_stages=stages,
        INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1",
        **dependent_launch.launch_args(x.device),
    )  # fmt: skip
    return y


CONFIGS = list(itertools.product((4, 8, 16, 32), (512, 1024, 2048), (4,), (3, 4)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    from fp8_gemm import SHAPES, cuda_us, fp8_layer
    from fp8_w8a8_probe import rotated

    from pagedllm.kernels.fp8_w8a8_matmul import small_batch_gated_matmul, small_batch_matmul
    from pagedllm.kernels.fused_ops import silu_and_mul
    from pagedllm.kernels.gemv import dense_linear

    print("| layer | package's FP8 product µs | bf16 GEMV µs | packed µs (TB/s), best config "
          "| packed rel err | package's rel err |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, (n, k) in SHAPES.items():
        layer = fp8_layer(n, k)
        copies = [layer.weight.clone() for _ in range(8)]
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(4)]
        scale = layer.weight_scale
        gated = name == "down"
        x = torch.randn(1, 2 * k if gated else k, device="cuda", dtype=torch.bfloat16)
        x[0, 7] = 300.0  # an outlier: the slice's scale must keep float16 in range
        inner = silu_and_mul(x) if gated else x
        ref = inner.float() @ (layer.weight.float() * scale[:, None]).t()
        if gated:
            package = functools.partial(small_batch_gated_matmul, x, scale=scale)
        else:
            package = functools.partial(small_batch_matmul, x, scale=scale)
        base = rotated(cuda_us, package, copies)
        bf16 = rotated(cuda_us, functools.partial(dense_linear, x, bias=None, gated=gated), dense)
        times = {}
        for c in CONFIGS:
            call = functools.partial(packed_gemv, x, scale=scale, config=c, gated=gated)
            try:
                times[c] = rotated(cuda_us, call, copies)
            except Exception as exc:  # a config that does not compile or fit
                print(f"skipped {c}: {type(exc).__name__}: {str(exc)[-600:]}", file=sys.stderr)
        if not times:
            print(f"| {name} | {base:.1f} | {bf16:.1f} | none ran | | |", flush=True)
            continue
        best = min(times, key=times.get)
        got = packed_gemv(x, layer.weight, scale, best, gated).float()
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        package_err = ((package(layer.weight).float() - ref).abs().max() / ref.abs().max()).item()
        rate = n * k / times[best] / 1e6
        print(f"| {name} | {base:.1f} | {bf16:.1f} | {times[best]:.1f} ({rate:.2f}), {best} "
              f"| {err:.4f} | {package_err:.4f} |", flush=True)  # fmt: skip
        runners_up = sorted(times, key=times.get)[1:6]
        print(f"<!-- {name} next: " + ", ".join(f"{c} {times[c]:.1f}" for c in runners_up) + " -->")
        copies.clear()
        dense.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
