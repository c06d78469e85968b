"""A candidate for issue 14's decode GEMV: FP8 weights times FP8 activations on tensor cores.

The FP8 GEMV in ``pagedllm/kernels/fp8_weight_matmul.py`` is bound by widening each e4m3
weight to float32 in registers (RESULTS.md, "FP8 GEMV: what bounds it"). Here the activations
are quantized per token (as ``--quantization fp8`` already does for larger batches, with
``quantize_rows``) and ``tl.dot`` takes both operands in e4m3: the tensor cores read the
weight bytes as stored, nothing is widened. A decode's one row pads the 16-row tile; the
tile is idle arithmetic, not extra bytes. ``split`` programs share a row strip's K (summed
in float32 by atomics) so the narrow layers still keep every SM reading.

    python benchmarks/fp8_w8a8_probe.py            # CUDA: µs and TB/s per layer at 1-16 rows

Each layer is timed twice: the product alone (activations quantized beforehand) and the
whole of what the engine would run (the package's quantize kernel, the product, the cast
back to bfloat16): the first H200 run (RESULTS.md, "W8A8 products for FP8 decode") timed
only the product, which beat the package kernel on every layer.

Not used by the engine: it moves into the package if it beats the GEMV on an H200.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent.parent))

FP8_MAX = 448.0


@triton.jit
def _w8a8_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, y_ptr, M, N, K, k_split, stride_xm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr,
):  # fmt: skip
    """y[M, N] (+)= (xq * xs) (wq * ws)^T over this program's K range; K % BLOCK_K == 0."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * k_split + tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, k_split, BLOCK_K):
        x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    xs = tl.load(xs_ptr + rm, mask=m_ok, other=0.0)
    ws = tl.load(ws_ptr + rn, mask=n_ok, other=0.0)
    acc = acc * xs[:, None] * ws[None, :]
    y_ptrs = y_ptr + rm[:, None] * N + rn[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if ATOMIC:
        tl.atomic_add(y_ptrs, acc, mask=mask)
    else:
        tl.store(y_ptrs, acc, mask=mask)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 and float32 scales (the torch form of ``kernels/fp8_quant.py``)."""
    scale = (x.abs().amax(dim=1).float() / FP8_MAX).clamp(min=1e-12)
    q = (x.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def w8a8_matmul(
    xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor,
    config: tuple[int, int, int, int, int] = (64, 128, 4, 3, 1),
) -> torch.Tensor:  # fmt: skip
    """float32 [M, N] = (xq * xs[:, None]) (wq * ws[:, None])^T, M <= 16."""
    block_n, block_k, warps, stages, split = config
    (m, k), n = xq.shape, wq.shape[0]
    assert m <= 16 and k % (block_k * split) == 0, (m, k, block_k, split)
    y = (torch.zeros if split > 1 else torch.empty)((m, n), dtype=torch.float32, device=xq.device)
    _w8a8_kernel[(triton.cdiv(n, block_n), split)](
        xq, xs, wq, ws, y, m, n, k, k // split, xq.stride(0), BLOCK_M=16, BLOCK_N=block_n,
        BLOCK_K=block_k, ATOMIC=split > 1, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def w8a8_linear(
    x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, config: tuple[int, int, int, int, int]
) -> torch.Tensor:
    """What a layer would run in the engine: the activations quantized by the package's
    kernel, the product (zeroed first when split), the result cast to x's dtype."""
    from pagedllm.kernels.fp8_quant import quantize_rows as quantize_kernel

    xq, xs = quantize_kernel(x)
    return w8a8_matmul(xq, xs.view(-1), wq, ws, config).to(x.dtype)


def probe(rows: list[int]) -> None:
    """Each layer of llama-3.1-8b at ``rows`` rows: the best of the configurations, against
    the package's FP8 GEMV / dot kernel, weights rotated past the L2 cache."""
    from fp8_gemm import SHAPES, cuda_us, fp8_layer

    from pagedllm.kernels.fp8_weight_matmul import fp8_weight_matmul

    configs = list(itertools.product((64, 128), (128, 256), (4,), (3, 4), (1, 2, 4)))
    print("| layer | rows | package kernel µs | W8A8 tl.dot µs (TB/s), best config | "
          "same with quantize + cast µs | max rel err |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, (n, k) in SHAPES.items():
        layer = fp8_layer(n, k)
        copies = [layer.weight.clone() for _ in range(8)]
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            base = rotated(cuda_us, lambda w: fp8_weight_matmul(x, w, layer.weight_scale), copies)  # noqa: B023
            xq, xs = quantize_rows(x)
            times = {
                c: rotated(cuda_us, lambda w, c=c: w8a8_matmul(xq, xs, w, layer.weight_scale, c),  # noqa: B023
                           copies)
                for c in configs
                if k % (c[1] * c[4]) == 0
            }  # fmt: skip
            best = min(times, key=times.get)
            whole = rotated(cuda_us, lambda w: w8a8_linear(x, w, layer.weight_scale, best),  # noqa: B023
                            copies)  # fmt: skip
            ref = fp8_weight_matmul(x, layer.weight, layer.weight_scale).float()
            got = w8a8_matmul(xq, xs, layer.weight, layer.weight_scale, best)
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            rate = n * k / times[best] / 1e6
            print(f"| {name} | {m} | {base:.1f} | {times[best]:.1f} ({rate:.2f}), {best} "
                  f"| {whole:.1f} | {err:.3f} |", flush=True)  # fmt: skip
        copies.clear()
        torch.cuda.empty_cache()


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
    args = parser.parse_args()
    probe([int(r) for r in args.rows.split(",")])


if __name__ == "__main__":
    main()
