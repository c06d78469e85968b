"""Whether a single stream's products gain from their weights prefetched into L2 while the
kernels before them (norm, rotary, attention: ~10 µs a layer that read almost nothing from
HBM) run. Issue 14's W3 and issue 18's W3: a one-row product of an 8B model's weights reads
at 2-3.7 TB/s, the small ones (o_proj) slowest, and HBM idles through attention.

    python benchmarks/l2_prefetch_probe.py   # CUDA (Hopper: cp.async.bulk.prefetch.L2)

Each timed CUDA graph repeats, for eight weight copies in turn (so no copy is in L2 from the
step before): a fetch of the first MB of a copy, a spin kernel of W µs (the attention's
window), the product. Fetches: ``touch`` (a kernel of loads kept in L2), ``line`` (one
``prefetch.global.L2::evict_last`` per 128-byte line), ``bulk`` (``cp.async.bulk.prefetch.L2``,
64 KiB an instruction). The graph that fetches another copy than the product reads pays the
fetch and gains nothing; the difference to the graph that fetches the product's own copy is
what L2 saves the product.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

CHUNK = 1 << 16  # bytes per bulk prefetch instruction


@triton.jit
def _prefetch_kernel(base, nbytes, CHUNK: tl.constexpr, PER_PROGRAM: tl.constexpr):
    """Each lane issues one bulk L2 prefetch of CHUNK bytes (fire and forget: the copy
    engine fills L2, no register receives anything)."""
    offs = (tl.program_id(0) * PER_PROGRAM + tl.arange(0, PER_PROGRAM)).to(tl.int64) * CHUNK
    size = tl.minimum(nbytes - offs, CHUNK).to(tl.int32)
    addr = base + offs  # base: the storage's address as an integer
    size = tl.where(size > 0, size, 0)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; "
        "mov.u32 $0, 0; }",
        "=r,l,r",
        [addr, size],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def _line_prefetch_kernel(base, nbytes, PER_PROGRAM: tl.constexpr):
    """One ``prefetch.global.L2::evict_last`` per 128-byte line, each lane a line."""
    offs = (tl.program_id(0) * PER_PROGRAM + tl.arange(0, PER_PROGRAM)).to(tl.int64) * 128
    addr = base + tl.minimum(offs, nbytes - 128)
    tl.inline_asm_elementwise(
        "prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;",
        "=r,l",
        [addr],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def _touch_kernel(ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Loads (kept in L2: evict_last) whose sum is stored only if it is NaN-like, so the
    loads are not removed and nothing is written."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(ptr + offs, mask=offs < n, other=0, eviction_policy="evict_last")
    total = tl.sum(v.to(tl.int32), axis=0)
    if total == -123456789:
        tl.store(out_ptr, total)


def touch_l2(t: torch.Tensor, nbytes: int) -> None:
    """Read the first ``nbytes`` of ``t`` (a kernel of loads, not a hint)."""
    flat = t.view(torch.uint8).view(-1)
    n = min(nbytes, flat.numel())
    block = 16384
    _touch_kernel[(triton.cdiv(n, block),)](flat, _sink(t.device), n, BLOCK=block)


def line_prefetch_l2(t: torch.Tensor, nbytes: int) -> None:
    nbytes = min(nbytes, t.numel() * t.element_size())
    per_program = 1024
    programs = triton.cdiv(triton.cdiv(nbytes, 128), per_program)
    _line_prefetch_kernel[(programs,)](t.data_ptr(), nbytes, PER_PROGRAM=per_program)


_sinks: dict[torch.device, torch.Tensor] = {}


def _sink(device: torch.device) -> torch.Tensor:
    if device not in _sinks:
        _sinks[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _sinks[device]


def prefetch_l2(t: torch.Tensor, nbytes: int) -> None:
    """Prefetch the first ``nbytes`` of ``t``'s storage into L2."""
    nbytes = min(nbytes, t.numel() * t.element_size()) // 16 * 16
    per_program = 32
    programs = triton.cdiv(triton.cdiv(nbytes, CHUNK), per_program)
    _prefetch_kernel[(programs,)](
        t.data_ptr(), nbytes, CHUNK=CHUNK, PER_PROGRAM=per_program, num_warps=1
    )


def graph_us(body: Callable[[int], None], copies: int) -> float:
    """µs per ``body(i)`` replayed from a CUDA graph (``fp8_gemm.cuda_us``), call j of the
    graph taking copy j mod ``copies``."""
    from fp8_gemm import cuda_us

    turn = itertools.count()
    return cuda_us(lambda: body(next(turn) % copies), 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-us", default="0,8")
    parser.add_argument("--prefetch-mb", default="8,16")
    parser.add_argument("--how", default="touch,line,bulk")
    args = parser.parse_args()
    from fp8_gemm import SHAPES, fp8_layer

    from pagedllm.kernels.fp8_w8a8_matmul import small_batch_gated_matmul, small_batch_matmul
    from pagedllm.kernels.gemv import dense_linear

    # A spin of c cycles: calibrate µs per cycle on this device.
    spin = 100_000
    cycles_us = graph_us(lambda i: torch.cuda._sleep(spin), 8) / spin
    print(f"spin: {cycles_us * 1e3:.3f} ns a cycle")
    print("| product | how | window µs | MB | alone µs | fetch of another copy µs "
          "| fetch of its copy µs | saved µs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, (n, k) in SHAPES.items():
        layer = fp8_layer(n, k)
        fp8 = [layer.weight.clone() for _ in range(8)]
        bf16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(8)]
        gated = name == "down"
        x = torch.randn(1, 2 * k if gated else k, device="cuda", dtype=torch.bfloat16)
        scale = layer.weight_scale
        if gated:
            products = {
                "fp8": lambda i: small_batch_gated_matmul(x, fp8[i], scale),  # noqa: B023
                "bf16": lambda i: dense_linear(x, bf16[i], None, gated=True),  # noqa: B023
            }
        else:
            products = {
                "fp8": lambda i: small_batch_matmul(x, fp8[i], scale),  # noqa: B023
                "bf16": lambda i: dense_linear(x, bf16[i], None),  # noqa: B023
            }
        for (kind, product), window in itertools.product(
            products.items(), [float(w) for w in args.window_us.split(",")]
        ):
            weights = fp8 if kind == "fp8" else bf16
            cycles = int(window / cycles_us)

            def plain(i: int, product=product, cycles=cycles) -> None:
                if cycles:
                    torch.cuda._sleep(cycles)
                product(i)

            base = graph_us(plain, 8)
            hows = {"touch": touch_l2, "line": line_prefetch_l2, "bulk": prefetch_l2}
            for how, mb in itertools.product(
                args.how.split(","), [int(m) for m in args.prefetch_mb.split(",")]
            ):
                fetch = hows[how]

                def ahead(i, product=product, cycles=cycles, mb=mb, weights=weights, fetch=fetch,
                          other=0) -> None:  # fmt: skip
                    fetch(weights[(i + other) % 8], mb << 20)
                    if cycles:
                        torch.cuda._sleep(cycles)
                    product(i)

                # the same fetch of another copy: its own cost, none of its benefit
                cold = graph_us(functools.partial(ahead, other=4), 8)
                warm = graph_us(ahead, 8)
                print(f"| {name} {kind} | {how} | {window:.0f} | {mb} | {base:.1f} | {cold:.1f} "
                      f"| {warm:.1f} | {cold - warm:.1f} |", flush=True)  # fmt: skip
        fp8.clear()
        bf16.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
