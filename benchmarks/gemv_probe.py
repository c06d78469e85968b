"""One row of activations times 16-bit weights: cuBLAS (``F.linear``) against the GEMV
kernel (``kernels/gemv``, which ``cuda_ops.linear`` takes where ``dense_preferred`` says),
at llama-3.1-8b's and qwen3-0.6b's layer shapes, and the down projection with its
activation fused against the activation kernel then cuBLAS (CUDA).

    python benchmarks/gemv_probe.py

Each call of the timed CUDA graph reads the next of eight weight copies, so the weights
come from HBM, not from the 50 MB L2, as in a model's step. Prints a markdown table: µs per
call (weight TB/s) for each GEMV tile configuration.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import torch
import torch.nn.functional as F
from fp8_gemm import cuda_us

from pagedllm.kernels.fused_ops import silu_and_mul
from pagedllm.kernels.gemv import DENSE_CONFIG, dense_preferred, gemv

SHAPES = {
    "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (28672, 4096),
    "8b down": (4096, 14336), "0.6b qkv": (4096, 1024), "0.6b o": (1024, 2048),
    "0.6b gate_up": (6144, 1024), "0.6b down": (1024, 3072),
}  # fmt: skip
CONFIGS = [DENSE_CONFIG, (8, 1024, 4, 3, 2), (16, 1024, 4, 3, 1), (8, 512, 4, 4, 1),
           (16, 2048, 4, 3, 1, 1, 1), (4, 1024, 2, 3, 1)]  # fmt: skip


def timed(call: Callable[[torch.Tensor], object], weights: list[torch.Tensor]) -> str:
    """µs per call (weight TB/s), each call reading the next weight copy."""
    turn = itertools.count()
    us = cuda_us(lambda: call(weights[next(turn) % len(weights)]))
    return f"{us:.1f} ({weights[0].numel() * 2 / us / 1e6:.2f})"


def shape_rows(name: str, n: int, k: int) -> list[str]:
    """The table rows of one [n, k] layer (and of its gated form for a down projection)."""
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(8)]
    x = torch.randn(1, 2 * k, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
    plain = x[:, :k]
    cells = [timed(lambda w: F.linear(plain, w), weights)]
    cells += [timed(lambda w, c=c: gemv(plain, w, None, None, y, c), weights) for c in CONFIGS]
    rows = [f"| {name} | " + " | ".join(cells) + f" | {dense_preferred(n, k)} |"]
    if "down" in name:
        cells = [timed(lambda w: F.linear(silu_and_mul(x), w), weights)]
        cells += [timed(lambda w, c=c: gemv(x, w, None, None, y, c, True), weights)
                  for c in CONFIGS]  # fmt: skip
        rows.append(f"| {name} gated | " + " | ".join(cells) + " | |")
    return rows


def main() -> None:
    print("| layer | cuBLAS | " + " | ".join(str(c) for c in CONFIGS) + " | preferred |")
    print("|---" * (len(CONFIGS) + 3) + "|")
    for name, (n, k) in SHAPES.items():
        for row in shape_rows(name, n, k):
            print(row, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
