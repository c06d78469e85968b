"""One layer's attention for a prompt chunk, after a cached prefix or none, on the CPU: SDPA
(with the boolean mask after a prefix, the torch backend's path past ``SCORES_LIMIT`` before
the query tiles; ``is_causal`` with none, its path for such chunks before them) against
``_attend_after_prefix``, at SmolLM2-135M's shapes (9 query heads, 3 KV heads of 64).

    python benchmarks/cpu_prefix_attention.py [--dtype bfloat16] [--tile-scores 1048576 ...]

Each figure is the faster of two timed calls after a warm-up; the outputs are checked
against each other first.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pagedllm.attention import torch_backend

HEADS, KV_HEADS, DIM = 9, 3, 64
# (cached, new tokens); with none cached SDPA runs causal, without a mask, as the backend did.
SHAPES = [(6000, 512), (2000, 2048), (6000, 2048), (7000, 64), (0, 512), (0, 2048), (0, 4096)]


def best_of_two(fn: Callable[[], torch.Tensor]) -> float:
    fn()
    times = []
    for _ in range(2):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def time_shape(prefix: int, length: int, dtype: torch.dtype, tile_scores: list[int]) -> str:
    """One shape's figures: SDPA with the mask, then the tiles at each size."""
    seq_len = prefix + length
    q = torch.randn(HEADS, length, DIM, dtype=dtype)
    k, v = (torch.randn(KV_HEADS, seq_len, DIM, dtype=dtype) for _ in range(2))
    mask = torch.arange(seq_len)[None, :] <= torch.arange(length)[:, None] + prefix
    sdpa = functools.partial(
        F.scaled_dot_product_attention, q, k, v, attn_mask=mask if prefix else None,
        is_causal=not prefix, scale=DIM**-0.5, enable_gqa=True,
    )  # fmt: skip
    tiles = functools.partial(torch_backend._attend_after_prefix, q, k, v, DIM**-0.5)
    torch.testing.assert_close(sdpa().float(), tiles().float(), atol=2e-2, rtol=2e-2)
    flops = 4 * HEADS * DIM * length * (prefix + length / 2)
    figures = [f"SDPA {best_of_two(sdpa) * 1e3:.1f} ms"]
    for scores in tile_scores:
        torch_backend.TILE_SCORES = scores
        seconds = best_of_two(tiles)
        figures.append(f"tiles of {scores} {seconds * 1e3:.1f} ms ({flops / seconds / 1e9:.0f} "
                       "GFLOP/s)")  # fmt: skip
    return f"{prefix} + {length}: " + ", ".join(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tile-scores", type=int, nargs="+", default=[torch_backend.TILE_SCORES])
    args = parser.parse_args()
    torch.manual_seed(0)
    for prefix, length in SHAPES:
        print(time_shape(prefix, length, getattr(torch, args.dtype), args.tile_scores))


if __name__ == "__main__":
    main()
