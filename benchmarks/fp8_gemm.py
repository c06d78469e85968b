"""FP8 linear layers against bfloat16 ones at llama-3.1-8b's shapes (CUDA).

    python benchmarks/fp8_gemm.py [--record]

For each projection (qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336) and
token count M (decode batches to prefill chunks): microseconds per call of the bfloat16
``F.linear``, of ``Fp8Linear`` on FP8 tensor cores (activation quantization kernel +
``torch._scaled_mm``), of the Triton FP8-weight kernel for small batches
(``kernels/fp8_weight_matmul``), and of the torch weight-only product; and the share of
HBM bandwidth the faster FP8 call reaches reading its weights.

``--sweep 1,2,4,8,16`` times the Triton kernels' tile configurations at those row counts
instead.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import torch
import torch.nn.functional as F
from record import append_record, device_name

from pagedllm.kernels.fp8_weight_matmul import MAX_ROWS, fp8_weight_matmul
from pagedllm.model.layers.device_ops import device_ops
from pagedllm.model.layers.fp8 import weight_only_linear
from pagedllm.model.layers.fp8_linear import Fp8Linear
from pagedllm.quantization import Fp8Scheme

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}  # fmt: skip
TOKENS = (1, 4, 8, 32, 64, 128, 256, 1024, 8192)


def cuda_us(fn, iters: int = 50) -> float:
    """Mean microseconds per call, replayed from a CUDA graph (as decode steps run)."""
    for _ in range(3):
        fn()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (iters * 10)


def fp8_layer(out_features: int, in_features: int) -> Fp8Linear:
    layer = Fp8Linear(in_features, out_features, False, torch.bfloat16, None,
                      Fp8Scheme(serialized=False, activations="dynamic"),
                      ops=device_ops(torch.device("cuda"))).cuda()  # fmt: skip
    layer.load("weight", torch.randn(out_features, in_features, device="cuda") * 0.02, None)
    layer.finish_loading()
    assert layer.use_fp8_gemm
    layer.small_batch_kernel = False  # timed separately
    return layer


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    source = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return 2 * source.numel() / (cuda_us(lambda: target.copy_(source), 5) * 1e-6)


def shape_rows(name: str, n: int, k: int, bandwidth: float) -> list[str]:
    """One table row per token count for an n x k projection."""
    layer = fp8_layer(n, k)
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    rows = []
    for m in TOKENS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        bf16 = cuda_us(lambda: F.linear(x, dense))  # noqa: B023 - timed at once
        fp8 = cuda_us(lambda: layer(x))  # noqa: B023
        triton_us = float("nan")
        if m <= MAX_ROWS:
            triton_us = cuda_us(lambda: fp8_weight_matmul(x, layer.weight, layer.weight_scale))  # noqa: B023
        torch_wo = cuda_us(lambda: weight_only_linear(x, layer.weight, layer.weight_scale, None))  # noqa: B023
        best = min(fp8, triton_us) if m <= MAX_ROWS else fp8
        read = n * k / (best * 1e-6) / bandwidth
        rows.append(f"| {name} | {m} | {bf16:.1f} | {fp8:.1f} | {triton_us:.1f} | "
                    f"{torch_wo:.1f} | {best / bf16:.2f} | {read:.0%} |")  # fmt: skip
    return rows


def sweep(bandwidth: float, row_counts: list[int]) -> list[str]:
    """The Triton kernels' tiles at decode batch sizes: the best per shape and rows."""
    gemv = list(itertools.product((8, 16), (512, 1024, 2048), (4, 8), (3,), (1,), (1, 2), (0, 1)))
    dot = list(itertools.product((16, 32), (256, 512), (4,), (3, 4), (1,)))
    lines = ["| layer | M | best kernel, (BLOCK_N, BLOCK_K, warps, stages, split) | µs "
             "| weight read | default µs |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, (n, k) in SHAPES.items():
        layer = fp8_layer(n, k)
        for m in row_counts:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            candidates = [("dot", c) for c in dot if m > 1]
            if m <= 2:
                candidates += [("gemv", c) for c in gemv]
            times = {
                (kind, c): cuda_us(lambda: fp8_weight_matmul(
                    x, layer.weight, layer.weight_scale, config=c, kernel=kind), 20)  # noqa: B023
                for kind, c in candidates
            }  # fmt: skip
            best = min(times, key=times.get)
            default = cuda_us(lambda: fp8_weight_matmul(x, layer.weight, layer.weight_scale))  # noqa: B023
            read = n * k / (times[best] * 1e-6) / bandwidth
            lines.append(f"| {name} | {m} | {best} | {times[best]:.1f} | {read:.0%} | "
                         f"{default:.1f} |")  # fmt: skip
            print(lines[-1], flush=True)
    return lines


def rotating_us(call, weights: list[torch.Tensor]) -> str:
    """µs per call (and weight TB/s) when each call of the captured graph reads the next
    of ``weights``: the graph is captured once, so the rotation is fixed in it."""
    turn = itertools.count()
    us = cuda_us(lambda: call(weights[next(turn) % len(weights)]))
    return f"{us:.1f} ({weights[0].numel() * weights[0].element_size() / us / 1e6:.2f})"


def probe() -> list[str]:
    """Where the one-row GEMV loses bandwidth: the same kernel on FP8 weights and on
    bfloat16 ones (no widening of FP8 values: if it reads bytes faster, the conversion is
    the limit), against cuBLAS' bfloat16 product. Each call reads another of eight weight
    copies, so the weights come from HBM, not from the 50 MB L2 (as in a model's step)."""
    lines = ["| layer | FP8 GEMV µs (TB/s) | same kernel on bf16 weights | cuBLAS bf16 |",
             "|---|---|---|---|"]  # fmt: skip
    for name, (n, k) in SHAPES.items():
        layer = fp8_layer(n, k)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        fp8 = [layer.weight.clone() for _ in range(8)]
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(8)]
        gemv = functools.partial(fp8_weight_matmul, x, scale=layer.weight_scale)
        lines.append(f"| {name} | {rotating_us(gemv, fp8)} "
                     f"| {rotating_us(gemv, dense)} "
                     f"| {rotating_us(functools.partial(F.linear, x), dense)} |")  # fmt: skip
        print(lines[-1], flush=True)
        del fp8, dense
        torch.cuda.empty_cache()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--sweep", type=lambda v: [int(r) for r in v.split(",")],
                        help="row counts to sweep tiles at, e.g. 1,2,4,8,16")  # fmt: skip
    parser.add_argument("--probe", action="store_true",
                        help="one row: FP8 and bfloat16 weights in one kernel")  # fmt: skip
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    lines = [f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", ""]
    if args.probe:
        lines += probe()
    elif args.sweep:
        lines += sweep(bandwidth, args.sweep)
    else:
        lines += [
            "| layer | M | bf16 µs | fp8 _scaled_mm µs | fp8 Triton µs | torch weight-only µs "
            "| best fp8 / bf16 | best fp8 weight read |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, (n, k) in SHAPES.items():
            lines += shape_rows(name, n, k, bandwidth)
            torch.cuda.empty_cache()
    print("\n".join(lines), flush=True)
    if args.record:
        append_record(
            "FP8 linear layers at llama-3.1-8b shapes",
            device_name(),
            "one layer, bfloat16 activations, CUDA-graph replay of 10 calls",
            lines,
        )


if __name__ == "__main__":
    main()
