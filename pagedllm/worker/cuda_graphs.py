"""CUDA graphs for decode steps: one graph per padded batch size, captured at start,
replayed on the persistent input buffers.

A decode step of a small model is hundreds of tiny kernels; replaying them as one graph
removes the launch gaps. Only pure decode batches use graphs (prefill chunks vary in shape);
a batch of n requests runs the smallest captured size >= n, padded with dummy requests.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import torch

from pagedllm.attention.triton_backend import TritonAttentionBackend
from pagedllm.logger import init_logger
from pagedllm.model.decoder import CausalLM, ForwardContext
from pagedllm.worker.input_batch import HostBatch
from pagedllm.worker.input_buffers import InputBuffers, dummy_decode_batch

logger = init_logger(__name__)


MIXED_SIZES = (128, 256, 512, 1024, 2048)  # token counts of the mixed (prefill) graphs
# Requests a mixed graph holds: every replay walks all its request slots, so they are
# capped (a mixed batch of more requests runs eagerly, where its steps are long anyway)
# rather than following max_num_seqs up to 1024.
MIXED_MAX_REQS = 256


def capture_sizes(
    max_num_seqs: int, requested: tuple[int, ...] | None = None, largest: int | None = None
) -> list[int]:
    """1, 2, 4, 8, 16, then steps of 16 up to 64, of 32 up to 256, of 64 beyond, up to
    max_num_seqs; or the ``requested`` sizes (--cudagraph-capture-sizes) that a batch can
    reach. ``largest`` (--max-cudagraph-capture-size) caps either: larger batches run
    eagerly."""
    limit = min(max_num_seqs, largest or max_num_seqs)
    if requested is not None:
        sizes = [s for s in sorted(requested) if s <= limit]
        if not sizes:
            raise ValueError(
                f"cudagraph_capture_sizes {list(requested)}: none is at most {limit} "
                "(max_num_seqs, or max_cudagraph_capture_size), so no graph would be used."
            )
        return sizes
    sizes = [1, 2, 4, 8, 16]
    size, step = 16, 16
    while size < limit:
        step = 16 if size < 64 else 32 if size < 256 else 64
        size += step
        sizes.append(size)
    return [s for s in sizes if s < limit] + [limit]


class CudaGraphs:
    def __init__(
        self,
        model: CausalLM,
        backend: TritonAttentionBackend,
        buffers: InputBuffers,
        kv_caches: list[torch.Tensor],
        max_num_seqs: int,
        kv_heads: int,
        sizes: list[int] | None = None,
    ) -> None:
        self.model = model
        self.backend = backend
        self.buffers = buffers
        self.kv_caches = kv_caches
        self.kv_heads = kv_heads
        self.sizes = sizes or capture_sizes(max_num_seqs)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # Batches with prefill chunks: padded to a token count, always mixed_reqs requests
        # (the last real one is followed by the padding request, then empty ones).
        self.mixed_reqs = min(max_num_seqs, MIXED_MAX_REQS) + 1
        self.mixed_sizes = [n for n in MIXED_SIZES if n <= buffers.max_tokens]
        self.mixed: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def segments(self, size: int) -> int:
        return self.backend.segments_for(size, 1, self.kv_heads)

    @torch.inference_mode()
    def capture(self) -> float:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        buffers = self.buffers
        one = dummy_decode_batch(1, buffers.block_size, buffers.scratch_block)
        for tokens in reversed(self.mixed_sizes):  # largest first: later ones reuse memory
            step = buffers.load_mixed(one, tokens, self.mixed_reqs)
            self.mixed[tokens] = self._capture_one(step, pool)
        for size in reversed(self.sizes):
            dummy = dummy_decode_batch(size, buffers.block_size, buffers.scratch_block)
            step = buffers.load(dummy, size, self.segments(size))
            self.graphs[size] = self._capture_one(step, pool)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        logger.info(
            "Captured %d decode CUDA graphs (up to %d requests) and %d mixed ones (up to %d "
            "tokens) in %.1f s",
            len(self.sizes), self.sizes[-1], len(self.mixed_sizes),
            self.mixed_sizes[-1] if self.mixed_sizes else 0, elapsed,
        )  # fmt: skip
        return elapsed

    def _capture_one(self, step: Any, pool: Any) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        metadata = self.backend.build_metadata(step.attn)
        ctx = ForwardContext(self.backend, metadata, self.kv_caches)
        for _ in range(2):  # compile the kernels, settle the allocator
            self.model(step.input_ids, step.positions, ctx)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            hidden = self.model(step.input_ids, step.positions, ctx)
        return graph, hidden

    def run(self, batch: HostBatch) -> torch.Tensor | None:
        """Replay the smallest graph that fits the batch; its real tokens' hidden states, or
        None when no captured graph fits (the caller runs it eagerly)."""
        if batch.is_pure_decode:
            i = bisect.bisect_left(self.sizes, batch.num_reqs)
            if i == len(self.sizes) or not self.graphs:
                return None
            size = self.sizes[i]
            self.buffers.load(batch, size, self.segments(size))
            graph, hidden = self.graphs[size]
        else:
            i = bisect.bisect_left(self.mixed_sizes, batch.num_tokens)
            if i == len(self.mixed_sizes) or batch.num_reqs >= self.mixed_reqs:
                return None
            tokens = self.mixed_sizes[i]
            self.buffers.load_mixed(batch, tokens, self.mixed_reqs)
            graph, hidden = self.mixed[tokens]
        graph.replay()
        return hidden[: batch.num_tokens]
