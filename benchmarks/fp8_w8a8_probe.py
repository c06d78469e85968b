"""Tiles for issue 14's decode product, ``pagedllm/kernels/fp8_w8a8_matmul.py``: FP8
weights times FP8 activations on tensor cores, the activations quantized per row and
``BLOCK_K`` slice inside the kernel, split-K sums finished by the strip's last program.

    python benchmarks/fp8_w8a8_probe.py --rows 1,4,16   # CUDA: µs and TB/s per layer
    python benchmarks/fp8_w8a8_probe.py --rows 1 --wide  # a wider space: warps, 512-column
                                                         # tiles, 32-row strips, split 16

For each llama-3.1-8b linear layer and row count: the package's widening kernel
(``fp8_weight_matmul``, what FP8 layers ran before), bfloat16 cuBLAS on the same shape, and
the W8A8 kernel's best configuration of the sweep, each call in the timed CUDA graph
reading the next of eight weight copies (HBM, not L2). The error column: the W8A8 result
against the weight-only product, relative to its largest magnitude.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent.parent))

CONFIGS = list(itertools.product((64, 128, 256), (128, 256), (4,), (3, 4), (1, 2, 4, 8)))
# --wide: what the first sweeps left out (8 warps, 512-column K tiles, 32-row strips, split
# 16). Tiles that need more shared memory than an SM has fail to launch and are skipped.
WIDE_CONFIGS = list(itertools.product((32, 64, 128), (256, 512), (4, 8), (3, 4), (1, 4, 8, 16)))


def probe(rows: list[int], configs: list[tuple[int, int, int, int, int]]) -> None:
    from fp8_gemm import SHAPES, cuda_us, fp8_layer

    from pagedllm.kernels.fp8_w8a8_matmul import config_for, w8a8_matmul
    from pagedllm.kernels.fp8_weight_matmul import fp8_weight_matmul

    print("| layer | rows | widening kernel µs | bf16 cuBLAS µs | W8A8 µs (TB/s), best config "
          "| W8A8 with the package's tiles µs | rel err |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, (n, k) in SHAPES.items():
        layer = fp8_layer(n, k)
        copies = [layer.weight.clone() for _ in range(8)]
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            scale = layer.weight_scale
            base = rotated(cuda_us, lambda w: fp8_weight_matmul(x, w, scale), copies)  # noqa: B023
            bf16 = rotated(cuda_us, lambda w: F.linear(x, w), dense)  # noqa: B023
            times = {}
            for c in configs:
                call = functools.partial(w8a8_matmul, x, scale=scale, config=c)
                try:
                    times[c] = rotated(cuda_us, call, copies)
                except Exception as exc:  # triton's OutOfResources: the tile does not fit
                    print(f"skipped {c}: {type(exc).__name__}", file=sys.stderr)
            best = min(times, key=times.get)
            tuned = rotated(cuda_us, lambda w: w8a8_matmul(x, w, scale), copies)  # noqa: B023
            ref = fp8_weight_matmul(x, layer.weight, scale).float()
            got = w8a8_matmul(x, layer.weight, scale, None, best).float()
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            rate, chosen = n * k / times[best] / 1e6, config_for(n, k, m)
            print(f"| {name} | {m} | {base:.1f} | {bf16:.1f} | {times[best]:.1f} ({rate:.2f}), "
                  f"{best} | {tuned:.1f} {chosen} | {err:.3f} |", flush=True)  # fmt: skip
            print_runners_up(f"{name} {m}", times)
        copies.clear()
        dense.clear()
        torch.cuda.empty_cache()


def print_runners_up(label: str, times: dict[tuple[int, ...], float]) -> None:
    """The five configurations after the best, as an HTML comment under the table's row."""
    runners_up = sorted(times, key=times.get)[1:6]
    print(f"<!-- {label} next: " + ", ".join(f"{c} {times[c]:.1f}" for c in runners_up) + " -->")


def rotated(
    cuda_us: Callable[[Callable[[], object], int], float],
    call: Callable[[torch.Tensor], torch.Tensor],
    copies: list[torch.Tensor],
) -> float:
    """µs per call when each call in the captured graph reads the next weight copy."""
    turn = itertools.count()
    return cuda_us(lambda: call(copies[next(turn) % len(copies)]), 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--wide", action="store_true", help="sweep WIDE_CONFIGS instead")
    args = parser.parse_args()
    probe([int(r) for r in args.rows.split(",")], WIDE_CONFIGS if args.wide else CONFIGS)


if __name__ == "__main__":
    main()
