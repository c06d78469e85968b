"""What the CPU's matrix-multiply options give at SmolLM2-135M's decode shapes (batch 32):
the GEMMs are most of a CPU decode step, so they bound what any engine reaches there.

Each projection of one layer and the LM head, float32 weights [N, K] against activations
[M, K]: ``F.linear``, ``W @ x^T`` (what pagedllm runs), MKL's packed weights, oneDNN's
packed weights, and torch's int4 weight-only kernel (as the GGUF's 4-bit weights could be
served) with bfloat16 activations. Also the bytes of weights a step reads.

    python benchmarks/cpu_gemm_options.py [--batch 32] [--record]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import torch
import torch.nn.functional as F
from record import append_record, device_name

# SmolLM2-135M: hidden 576, 9 query / 3 KV heads of 64, MLP 1536, 30 layers, vocab 49,152.
SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate_up": (576, 3072), "down": (1536, 576),
          "lm_head": (576, 49152)}  # fmt: skip
LAYERS = 30


def per_call_us(fn: Callable[[], object], number: int) -> float:
    fn()
    return timeit.timeit(fn, number=number) / number * 1e6


def options(m: int, k: int, n: int) -> dict[str, float]:
    x, w = torch.randn(m, k), torch.randn(n, k)
    number = 20 if n > 10_000 else 200
    found = {
        "F.linear": per_call_us(lambda: F.linear(x, w), number),
        "W @ x^T": per_call_us(lambda: w @ x.t(), number),
    }
    mkl = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
    found["MKL packed"] = per_call_us(lambda: torch.ops.mkl._mkl_linear(x, mkl, w, None, m), number)
    dnn = torch.ops.mkldnn._reorder_linear_weight(w, m)
    found["oneDNN packed"] = per_call_us(
        lambda: torch.ops.mkldnn._linear_pointwise(x, dnn, None, "none", [], ""), number
    )
    q = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    scales = torch.randn(k // 32, n, 2, dtype=torch.bfloat16)
    xb = x.bfloat16()
    found["int4 weights (bf16 x)"] = per_call_us(
        lambda: torch._weight_int4pack_mm_for_cpu(xb, packed, 32, scales), max(number // 4, 5)
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    results = {name: options(args.batch, k, n) for name, (k, n) in SHAPES.items()}
    columns = list(next(iter(results.values())))
    rows = ["| GEMM [K -> N] | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, found in results.items():
        k, n = SHAPES[name]
        rows.append(
            f"| {name} [{k} -> {n}] | " + " | ".join(f"{v:,.0f} µs" for v in found.values()) + " |"
        )
    step = {c: sum(r[c] * (1 if name == "lm_head" else LAYERS) for name, r in results.items())
            for c in columns}  # fmt: skip
    rows.append(
        "| **one decode step** | "
        + " | ".join(f"**{v / 1e3:.1f} ms**" for v in step.values())
        + " |"
    )
    weights = sum(k * n * (1 if name == "lm_head" else LAYERS) for name, (k, n) in SHAPES.items())
    rows.append("")
    rows.append(f"Weights read per decode step in float32: {weights * 4 / 1e6:.0f} MB.")
    print("\n".join(rows))
    if args.record:
        workload = (
            f"SmolLM2-135M decode shapes, batch {args.batch}, float32 weights; "
            "per-call means of timeit loops; a step = 30 layers + the LM head"
        )
        append_record("CPU GEMM options", device_name(), workload, rows)


if __name__ == "__main__":
    main()
