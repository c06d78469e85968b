"""CUDA graphs for decode steps: one graph per padded batch size, captured at start,
replayed on the persistent input buffers.

A decode step of a small model is hundreds of tiny kernels; replaying them as one graph
removes the launch gaps. Only pure decode batches use graphs (prefill chunks vary in shape);
a batch of n requests runs the smallest captured size >= n, padded with dummy requests.
"""

from __future__ import annotations

import bisect
import time

import torch

from pagedllm.attention.triton_backend import TritonAttentionBackend
from pagedllm.logger import init_logger
from pagedllm.model.decoder import CausalLM, ForwardContext
from pagedllm.worker.input_batch import HostBatch
from pagedllm.worker.input_buffers import InputBuffers, dummy_decode_batch

logger = init_logger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, then steps of 16 up to 64, of 32 up to 256, of 64 beyond."""
    sizes = [1, 2, 4, 8, 16]
    size, step = 16, 16
    while size < max_num_seqs:
        step = 16 if size < 64 else 32 if size < 256 else 64
        size += step
        sizes.append(size)
    return [s for s in sizes if s < max_num_seqs] + [max_num_seqs]


class CudaGraphs:
    def __init__(
        self,
        model: CausalLM,
        backend: TritonAttentionBackend,
        buffers: InputBuffers,
        kv_caches: list[torch.Tensor],
        max_num_seqs: int,
        kv_heads: int,
    ) -> None:
        self.model = model
        self.backend = backend
        self.buffers = buffers
        self.kv_caches = kv_caches
        self.kv_heads = kv_heads
        self.sizes = capture_sizes(max_num_seqs)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def segments(self, size: int) -> int:
        return self.backend.segments_for(size, 1, self.kv_heads)

    @torch.inference_mode()
    def capture(self) -> float:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        buffers = self.buffers
        for size in reversed(self.sizes):  # largest first: later ones reuse its memory
            dummy = dummy_decode_batch(size, buffers.block_size, buffers.scratch_block)
            step = buffers.load(dummy, size, self.segments(size))
            ctx = ForwardContext(
                self.backend, self.backend.build_metadata(step.attn), self.kv_caches
            )  # type: ignore[attr-defined]
            for _ in range(2):  # compile the kernels, settle the allocator
                self.model(step.input_ids, step.positions, ctx)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self.model(step.input_ids, step.positions, ctx)
            self.graphs[size] = (graph, hidden)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        logger.info(
            "Captured %d CUDA graphs (batch sizes up to %d) in %.1f s",
            len(self.sizes),
            self.sizes[-1],
            elapsed,
        )
        return elapsed

    def size_for(self, batch: HostBatch) -> int | None:
        if not self.graphs or not batch.is_pure_decode:
            return None
        i = bisect.bisect_left(self.sizes, batch.num_reqs)
        return self.sizes[i] if i < len(self.sizes) else None

    def run(self, batch: HostBatch, size: int) -> torch.Tensor:
        """Replay the graph of ``size`` on this batch; hidden states of its real tokens."""
        self.buffers.load(batch, size, self.segments(size))
        graph, hidden = self.graphs[size]
        graph.replay()
        return hidden[: batch.num_tokens]
