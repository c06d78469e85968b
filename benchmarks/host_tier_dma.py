"""Whether the host tier's swap-ins should move by the copy engines (DMA) instead of the copy
kernel (issue 20), measured beside a prefill's products (GPU).

The tier today copies with ``kernels/kv_block_copy.py`` on 16 SMs, beside the forward pass;
a later turn's TTFT still sits ~1-5 ms above its floor (RESULTS "The host tier's saves
ahead ..."), the copy taking SMs from the layers. The copy engines take none, but move only
contiguous runs: a host layout by layer (``[layers, slots, 2, block, heads, dim]``) makes a
run of consecutive slots one DMA per layer, into a device staging buffer, from which a small
kernel scatters the blocks into the cache. This times, for one swap-in of ``--blocks``
blocks (consecutive slots, scattered device blocks):

- the copy alone and beside a loop of prefill-sized products on the compute stream;
- how much slower the products run beside it.

Variants: the engine's copy kernel (``HostKVCache``, slot-major host memory); DMA with the
scatter of each layer right after its DMA on one stream; DMA of every layer on one stream
and the scatters on another, each waiting for its layer's DMA.

    python benchmarks/host_tier_dma.py [--blocks 230] [--layers 32] [--tokens 616]
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

BLOCK = (16, 8, 128)  # llama-3.1-8b: 16-token blocks, 8 KV heads of 128


def elapsed_ms(start: torch.cuda.Event, end: torch.cuda.Event) -> float:
    end.synchronize()
    return start.elapsed_time(end)


class Setup:
    def __init__(self, args: argparse.Namespace) -> None:
        n, layers = args.blocks, args.layers
        self.n = n
        device_blocks = 4 * n
        self.caches = [
            torch.zeros(2, device_blocks, *BLOCK, dtype=torch.bfloat16, device="cuda")
            for _ in range(layers)
        ]
        rng = random.Random(0)
        self.block_ids = rng.sample(range(device_blocks), n)
        self.blocks = torch.tensor(self.block_ids, device="cuda")
        # Slot-major (the engine's) and layer-major host tiers, both pinned.
        self.tier = HostKVCache(self.caches, n)
        self.by_layer = torch.randn(layers, n, 2, *BLOCK).to(torch.bfloat16).pin_memory()
        self.staging = torch.empty(layers, n, 2, *BLOCK, dtype=torch.bfloat16, device="cuda")
        self.copy_stream = torch.cuda.Stream(priority=-1)
        self.scatter_stream = torch.cuda.Stream(priority=-1)
        self.layer_events = [torch.cuda.Event() for _ in range(layers)]
        # A prefill's MLP products: [tokens, 4096] x [4096, 14336], then back.
        self.x = torch.randn(args.tokens, 4096, dtype=torch.bfloat16, device="cuda")
        self.up = torch.randn(4096, 14336, dtype=torch.bfloat16, device="cuda")
        self.down = torch.randn(14336, 4096, dtype=torch.bfloat16, device="cuda")
        self.layers = layers
        self.passes = args.passes

    def products(self) -> None:
        for _ in range(self.layers * self.passes):
            torch.mm(torch.mm(self.x, self.up), self.down)

    def kernel(self) -> None:
        loads = self.tier.swap_in(list(zip(range(self.n), self.block_ids, strict=True)))
        assert loads is not None
        loads.wait_all()  # the compute stream waits: the end of the copy is timed there

    def _scatter(self, layer: int) -> None:
        source = self.staging[layer].transpose(0, 1)  # [2, n, ...]
        self.caches[layer].index_copy_(1, self.blocks, source)

    def dma_one_stream(self) -> None:
        self.copy_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.copy_stream):
            for layer in range(self.layers):
                self.staging[layer].copy_(self.by_layer[layer], non_blocking=True)
                self._scatter(layer)
        torch.cuda.current_stream().wait_stream(self.copy_stream)

    def dma_two_streams(self) -> None:
        current = torch.cuda.current_stream()
        self.copy_stream.wait_stream(current)
        self.scatter_stream.wait_stream(current)
        with torch.cuda.stream(self.copy_stream):
            for layer in range(self.layers):
                self.staging[layer].copy_(self.by_layer[layer], non_blocking=True)
                self.layer_events[layer].record(self.copy_stream)
        with torch.cuda.stream(self.scatter_stream):
            for layer in range(self.layers):
                self.scatter_stream.wait_event(self.layer_events[layer])
                self._scatter(layer)
        current.wait_stream(self.scatter_stream)


def timed(fn: Callable[[], None], beside: Callable[[], None] | None, repeat: int) -> tuple:
    """Median (copy done, products done) in ms from a common start: the products queued on
    a stream of their own, then the copy on its side streams (ending on this one)."""
    copy_ms, products_ms = [], []
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
        fn()
        copied.record()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        copy_ms.append(elapsed_ms(start, copied))
        products_ms.append(elapsed_ms(start, computed) if beside is not None else 0.0)
    return sorted(copy_ms)[repeat // 2], sorted(products_ms)[repeat // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=230, help="blocks a swap-in copies")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=616, help="rows of the products")
    parser.add_argument("--passes", type=int, default=2, help="products: passes over the layers")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    setup = Setup(args)
    nbytes = args.blocks * args.layers * 2 * 16 * 8 * 128 * 2
    alone = setup.products
    for fn in (setup.kernel, setup.dma_one_stream, setup.dma_two_streams, alone):
        fn()  # warm: kernels compiled, cuBLAS chosen
    torch.cuda.synchronize()
    for layer, j in ((0, 0), (args.layers - 1, args.blocks - 1)):  # the scatter's targets
        got = setup.caches[layer][:, setup.block_ids[j]].cpu()
        assert torch.equal(got, setup.by_layer[layer, j]), "DMA + scatter copied wrongly"
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    alone()
    end.record()
    products_alone = elapsed_ms(start, end)
    print(f"{args.blocks} blocks x {args.layers} layers ({nbytes / 1e6:.0f} MB), products "
          f"of {args.tokens} rows alone: {products_alone:.2f} ms")  # fmt: skip
    print("| copy | alone | beside the products | products beside it |")
    print("|---|---|---|---|")
    for name, fn in (
        ("copy kernel, 16 programs (the engine's)", setup.kernel),
        ("DMA + scatter, one stream", setup.dma_one_stream),
        ("DMA on one stream, scatters on another", setup.dma_two_streams),
    ):
        copy_alone, _ = timed(fn, None, args.repeat)
        copy_beside, products = timed(fn, alone, args.repeat)
        rate = nbytes / copy_alone / 1e6
        print(f"| {name} | {copy_alone:.2f} ms ({rate:.1f} GB/s) | {copy_beside:.2f} ms | "
              f"{products:.2f} ms ({products / products_alone:.2f}x) |")  # fmt: skip


if __name__ == "__main__":
    main()
