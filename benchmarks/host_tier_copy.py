"""Time the host KV tier's copies (``worker/host_kv_cache.py``) against a plain pinned copy of
the same bytes (GPU): what a later turn's copy back costs in the multi-turn benchmark.

    python benchmarks/host_tier_copy.py [--blocks 312] [--layers 32]

The shape is llama-3.1-8b's (8 KV heads of 128, bfloat16, 16-token blocks): 2 MiB a block
over 32 layers; 312 blocks are ~5,000 tokens of history.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from pagedllm.worker.host_kv_cache import HostKVCache


def timed_ms(fn: Callable[[], None], repeat: int = 5) -> float:
    """Median wall time of ``fn`` with the device drained before and after."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=312, help="blocks copied a turn")
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    n = args.blocks
    device_blocks = 4 * n
    caches = [
        torch.zeros(2, device_blocks, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
        for _ in range(args.layers)
    ]
    host = HostKVCache(caches, 4 * n)
    nbytes = n * host.host[0].numel()
    rng = random.Random(0)
    blocks = rng.sample(range(device_blocks), n)
    scattered = rng.sample(range(4 * n), n)
    plans = {
        "swap_in, consecutive slots": list(zip(range(n), blocks, strict=True)),
        "swap_in, scattered slots": list(zip(scattered, blocks, strict=True)),
    }
    print(f"{n} blocks, {nbytes / 1e6:.0f} MB; pinned: {host.host.is_pinned()}")

    def swap_in(copies: list[tuple[int, int]]) -> None:
        loads = host.swap_in(copies)  # on the tier's side stream: the timed stream waits
        if loads is not None:
            loads.wait_all()

    for name, copies in plans.items():
        ms = timed_ms(lambda c=copies: swap_in(c))
        print(f"{name}: {ms:.2f} ms, {nbytes / ms / 1e6:.1f} GB/s")
    outs = [(b, s) for s, b in plans["swap_in, scattered slots"]]
    ms = timed_ms(lambda: host.swap_out(outs))
    print(f"swap_out, scattered slots: {ms:.2f} ms, {nbytes / ms / 1e6:.1f} GB/s")
    flat = host.host[:n].reshape(-1)
    target = torch.empty_like(flat, device="cuda")
    ms = timed_ms(lambda: target.copy_(flat, non_blocking=True))
    print(f"one pinned copy host -> device: {ms:.2f} ms, {nbytes / ms / 1e6:.1f} GB/s")
    ms = timed_ms(lambda: flat.copy_(target, non_blocking=True))
    print(f"one pinned copy device -> host: {ms:.2f} ms, {nbytes / ms / 1e6:.1f} GB/s")


if __name__ == "__main__":
    main()
