"""Tiles for the packed FP8 GEMV (``pagedllm/kernels/fp8_packed_gemv.py``: one row times e4m3
weights on packed float16 instructions; its docstring says why), against the other kernels a
one-row FP8 product could take (the W8A8 kernel's one-row path; the widening GEMV, which
static and weight-only schemes use) and the 16-bit GEMV on bfloat16 weights of the same
shapes.

    python benchmarks/fp8_gemv_packed_probe.py   # CUDA, compute capability 8.9+

Each call in the timed CUDA graph reads the next of eight weight copies (HBM, not L2). The
activations carry an outlier (300) so the slices' scaling is exercised; errors are against
the float32 product of the same e4m3 weights, relative to its largest magnitude.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

from pagedllm.kernels.fp8_packed_gemv import packed_gemv

# (BLOCK_N, BLOCK_K, num_warps, num_stages). The per-column accumulators hold
# BLOCK_N x BLOCK_K / 4 floats a program, so small K tiles and more warps are in the sweep.
CONFIGS = list(itertools.product((2, 4, 8, 16, 32), (256, 512, 1024, 2048), (2, 4, 8), (3,)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    from fp8_gemm import SHAPES, cuda_us, fp8_layer
    from fp8_w8a8_probe import print_runners_up, rotated

    from pagedllm.kernels.fp8_packed_gemv import config_for
    from pagedllm.kernels.fp8_w8a8_matmul import w8a8_matmul
    from pagedllm.kernels.fp8_weight_matmul import fp8_weight_matmul
    from pagedllm.kernels.fused_ops import silu_and_mul
    from pagedllm.kernels.gemv import dense_linear

    print("| layer | W8A8 one-row µs | widening µs (down: activation kernel first) "
          "| bf16 GEMV µs | packed µs (TB/s), best config | packed, tuned tiles µs "
          "| rel err: packed / W8A8 / widening |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
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
        products = {  # the kernels a one-row product could take, as each is called
            "w8a8": functools.partial(w8a8_matmul, x, scale=scale, gated=gated),
            "widening": lambda w: fp8_weight_matmul(silu_and_mul(x) if gated else x, w, scale),  # noqa: B023
            "tuned": functools.partial(packed_gemv, x, scale=scale, gated=gated),
        }
        us = {key: rotated(cuda_us, call, copies) for key, call in products.items()}
        bf16 = rotated(cuda_us, functools.partial(dense_linear, x, bias=None, gated=gated), dense)
        times = {}
        for c in CONFIGS:
            call = functools.partial(packed_gemv, x, scale=scale, gated=gated, config=c)
            try:
                times[c] = rotated(cuda_us, call, copies)
            except Exception as exc:  # a config that does not compile or fit
                print(f"skipped {c}: {type(exc).__name__}: {str(exc)[-600:]}", file=sys.stderr)
        best = min(times, key=times.get)
        errors = "/".join(
            f"{((products[key](layer.weight).float() - ref).abs().max() / ref.abs().max()):.4f}"
            for key in ("tuned", "w8a8", "widening")
        )
        rate = n * k / times[best] / 1e6
        print(f"| {name} | {us['w8a8']:.1f} | {us['widening']:.1f} | {bf16:.1f} "
              f"| {times[best]:.1f} ({rate:.2f}), {best} | {us['tuned']:.1f} "
              f"{config_for(n, k)} | {errors} |", flush=True)  # fmt: skip
        print_runners_up(name, times)
        copies.clear()
        dense.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
