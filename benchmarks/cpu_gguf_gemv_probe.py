"""Products on GGUF's Q4_1 and Q8_0 blocks as stored, by pagedllm's CPU kernels (issue 21),
against float32 ``F.linear`` on the dequantized weights.

The last stop's probe (RESULTS "4-bit weights for CPU single-stream decode, a probe") left a
4-bit product and a widening kernel of the project's own as the way to llama.cpp's single
stream, and the LM head's Q8_0 without any torch kernel. Before building either into the
engine, this measures what a plain AVX2 kernel reaches on the bundled SmolLM2's tensors as
the file stores them (no repacking, no extra copy: the weights in memory are the file's
bytes), and checks each result against the dequantized float32 product.

The kernels are the engine's since 00ab54c (``pagedllm.kernels.gguf_cpu``, built once per
machine); the version of this probe behind the 2026-12-04 record compiled its own copy,
with a third variant for several rows (each weight row widened into L1, then dotted with
every input row) that the engine did not take (f42bf69).

    python benchmarks/cpu_gguf_gemv_probe.py [--threads 2] [--reps 200]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from pagedllm.kernels import gguf_cpu
from pagedllm.model_files import bundled_gguf_path

# Block types -> the engine's kernels (pagedllm/csrc/gguf_cpu.cpp): one row by the gemv,
# several by the register-blocked panels.
KERNELS = (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0)


def best_us(fn, reps: int) -> float:
    """Median of five best-of-``reps`` timings, µs per call."""
    rounds = []
    for _ in range(5):
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        rounds.append(best)
    return statistics.median(rounds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reader = GGUFReader(bundled_gguf_path())
    quantized = [t for t in reader.tensors if t.tensor_type in KERNELS]
    counts = Counter((t.tensor_type.name, tuple(t.data.shape)) for t in quantized)
    generator = torch.Generator().manual_seed(0)
    rows = [
        "| tensor (type, stored bytes) | per token | ours µs | float32 F.linear µs | ours / "
        "float32 | ours GB/s | max rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    total = {"ours": 0.0, "float32": 0.0}
    seen = set()
    for t in quantized:
        key = (t.tensor_type.name, tuple(t.data.shape))
        if key in seen:
            continue
        seen.add(key)
        stored = torch.from_numpy(np.array(t.data))
        dense = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
        n, k = dense.shape
        x = torch.randn(k, generator=generator)
        gemv = functools.partial(gguf_cpu.linear, qtype=int(t.tensor_type))
        got, want = gemv(stored, x=x[None])[0], F.linear(x[None], dense)[0]
        error = ((got - want).abs().max() / want.abs().max()).item()
        ours = best_us(functools.partial(gemv, stored, x=x[None]), args.reps)
        plain = best_us(functools.partial(F.linear, x[None], dense), args.reps)
        per_token = counts[key]
        total["ours"] += per_token * ours
        total["float32"] += per_token * plain
        rate = stored.numel() / ours / 1e3
        rows.append(
            f"| {t.tensor_type.name} {n}x{k} ({stored.numel() / 1e6:.2f} MB) | {per_token} | "
            f"{ours:.1f} | {plain:.1f} | {ours / plain:.2f} | {rate:.1f} | {error:.1e} |"
        )
    rows.append(
        f"\nsum over the {sum(counts.values())} products of a token, each timed warm in "
        f"cache: ours {total['ours'] / 1e3:.2f} ms, float32 {total['float32'] / 1e3:.2f} ms"
    )
    header = [
        "| rows | ours | float32 F.linear | float32 / ours |",
        "|---|---|---|---|",
    ]
    reps = args.reps // 20 + 1
    rows += [
        "\na decode step's 211 products in turn, each on its own weights (from memory): ours "
        "on the file's 96 MB (one row: the gemv; several: 16 weight rows widened into a "
        "panel, 6 input rows a pass), float32 on the dequantized 538 MB",
        *header,
        *(token_times(quantized, reps, r) for r in (1, 2, 8, 32)),
    ]
    check_batched(quantized)
    print(f"{args.threads} threads\n" + "\n".join(rows))


def check_batched(tensors: list) -> None:
    """The several-row kernel against the dequantized product, one tensor of each type."""
    for kind in KERNELS:
        t = next(t for t in tensors if t.tensor_type == kind)
        dense = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
        x = torch.randn(13, dense.shape[1])  # two passes of 6 rows and a remainder
        want = F.linear(x, dense)
        got = gguf_cpu.linear(torch.from_numpy(np.array(t.data)), int(kind), x)
        error = ((got - want).abs().max() / want.abs().max()).item()
        assert error < 1e-5, f"{kind.name}: relative error {error:.1e}"


def token_times(tensors: list, reps: int, rows: int = 1) -> str:
    """Every product of a decode step of ``rows`` sequences in the file's order, each on
    its own weights (so they stream from memory as in decoding): ours on the stored bytes,
    float32 on dequantized copies. Best of ``reps`` steps."""
    ours, plain = [], []
    for t in tensors:
        stored = torch.from_numpy(np.array(t.data))
        dense = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
        x = torch.randn(rows, dense.shape[1])
        ours.append((int(t.tensor_type), stored, x))
        plain.append((dense, x))
    stored_mb = sum(w.numel() for _, w, _ in ours) / 1e6
    dense_mb = sum(w.numel() * 4 for w, _ in plain) / 1e6

    def run_ours() -> None:
        for qtype, w, x in ours:
            gguf_cpu.linear(w, qtype, x)

    def run_plain() -> None:
        for w, x in plain:
            F.linear(x, w)

    a, b = best_us(run_ours, reps) / 1e3, best_us(run_plain, reps) / 1e3
    return (
        f"| {rows} | {a:.2f} ms ({stored_mb / a:.1f} GB/s) | {b:.2f} ms ({dense_mb / b:.1f} "
        f"GB/s) | {b / a:.2f}x |"
    )


if __name__ == "__main__":
    main()
