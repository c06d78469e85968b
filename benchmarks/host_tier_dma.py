"""The host tier's swap-ins by the copy engines (DMA) against the copy kernel, each alone and
beside a prefill's products (issue 20; GPU).

``HostKVCache`` copies a swap-in whose runs of consecutive slots average ``MIN_RUN_BLOCKS``
or more by the copy engines (per layer a copy per run into a staging buffer, then a kernel
scattering the blocks into the cache); shorter runs by ``kernels/kv_block_copy.py`` on 16
SMs reading the pinned memory. This times one swap-in of ``--blocks`` blocks in runs of
``--run-blocks`` consecutive slots (scattered device blocks) by each path:

- the copy alone and beside a loop of prefill-sized products on the compute stream;
- how much slower the products run beside it.

    python benchmarks/host_tier_dma.py [--blocks 269] [--run-blocks 38] [--layers 32]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from pagedllm.worker import host_kv_cache
from pagedllm.worker.host_kv_cache import HostKVCache

BLOCK = (16, 8, 128)  # llama-3.1-8b: 16-token blocks, 8 KV heads of 128


def elapsed_ms(start: torch.cuda.Event, end: torch.cuda.Event) -> float:
    end.synchronize()
    return start.elapsed_time(end)


class Setup:
    def __init__(self, args: argparse.Namespace) -> None:
        n, layers = args.blocks, args.layers
        device_blocks = 4 * n
        self.caches = [
            torch.zeros(2, device_blocks, *BLOCK, dtype=torch.bfloat16, device="cuda")
            for _ in range(layers)
        ]
        # Runs of ``run_blocks`` consecutive slots, a gap after each (2 n slots in all).
        run = args.run_blocks
        slots = [2 * (i // run) * run + i % run for i in range(n)]
        blocks = random.Random(0).sample(range(device_blocks), n)
        self.copies = list(zip(slots, blocks, strict=True))
        self.tier = HostKVCache(self.caches, 2 * n)
        self.tier.host.copy_(torch.randint(0, 256, self.tier.host.shape, dtype=torch.uint8))
        # A prefill's MLP products: [tokens, 4096] x [4096, 14336], then back.
        self.x = torch.randn(args.tokens, 4096, dtype=torch.bfloat16, device="cuda")
        self.up = torch.randn(4096, 14336, dtype=torch.bfloat16, device="cuda")
        self.down = torch.randn(14336, 4096, dtype=torch.bfloat16, device="cuda")
        self.layers = layers
        self.passes = args.passes

    def products(self) -> None:
        for _ in range(self.layers * self.passes):
            torch.mm(torch.mm(self.x, self.up), self.down)

    def swap_in(self, min_run: int) -> Callable[[], None]:
        def copy() -> None:
            host_kv_cache.MIN_RUN_BLOCKS = min_run
            loads = self.tier.swap_in(self.copies)
            assert loads is not None
            loads.wait_all()  # the compute stream waits: the end of the copy is timed there

        return copy

    def check(self) -> None:
        """Every layer's first and last copied block holds its slot's bytes."""
        torch.cuda.synchronize()
        for layer in (0, self.layers - 1):
            for slot, block in (self.copies[0], self.copies[-1]):
                got = self.caches[layer][:, block].view(torch.uint8).cpu()
                assert torch.equal(got, self.tier.host[layer, slot]), "swap-in copied wrongly"


def timed(fn: Callable[[], None], beside: Callable[[], None] | None, repeat: int) -> tuple:
    """Median (copy done, products done, the host's time queuing the copy) in ms from a
    common start: the products queued on a stream of their own, then the copy on its side
    streams (ending on this one)."""
    copy_ms, products_ms, host_ms = [], [], []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start, copied, computed = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        start.record()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        if beside is not None:
            with torch.cuda.stream(side):
                beside()
                computed.record(side)
        queued = time.perf_counter()
        fn()
        host_ms.append((time.perf_counter() - queued) * 1e3)
        copied.record()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        copy_ms.append(elapsed_ms(start, copied))
        products_ms.append(elapsed_ms(start, computed) if beside is not None else 0.0)
    return tuple(sorted(ms)[repeat // 2] for ms in (copy_ms, products_ms, host_ms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=269, help="blocks a swap-in copies")
    parser.add_argument("--run-blocks", type=int, default=38, help="consecutive slots a run")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=616, help="rows of the products")
    parser.add_argument("--passes", type=int, default=2, help="products: passes over the layers")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    setup = Setup(args)
    nbytes = args.blocks * args.layers * 2 * 16 * 8 * 128 * 2
    alone = setup.products
    variants = (
        ("copy kernel, 16 programs", setup.swap_in(1 << 30)),
        ("copy engines + scatter kernels", setup.swap_in(1)),
    )
    for _, fn in variants:
        for cache in setup.caches:
            cache.zero_()
        fn()  # warm: kernels compiled
        setup.check()
    alone()  # cuBLAS chosen
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    alone()
    end.record()
    products_alone = elapsed_ms(start, end)
    print(f"{args.blocks} blocks in runs of {args.run_blocks} x {args.layers} layers "
          f"({nbytes / 1e6:.0f} MB), products of {args.tokens} rows alone: "
          f"{products_alone:.2f} ms")  # fmt: skip
    print("| copy | host time to queue it | alone | beside the products | products beside it |")
    print("|---|---|---|---|---|")
    for name, fn in variants:
        copy_alone, _, host = timed(fn, None, args.repeat)
        copy_beside, products, _ = timed(fn, alone, args.repeat)
        rate = nbytes / copy_alone / 1e6
        slower = products / products_alone
        print(f"| {name} | {host:.2f} ms | {copy_alone:.2f} ms ({rate:.1f} GB/s) | "
              f"{copy_beside:.2f} ms | {products:.2f} ms ({slower:.2f}x) |")  # fmt: skip


if __name__ == "__main__":
    main()
