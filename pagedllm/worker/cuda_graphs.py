"""CUDA graphs: one graph per padded batch shape, captured at start, replayed on the
persistent input buffers.

A decode step of a small model is hundreds of tiny kernels; replaying them as one graph
removes the launch gaps. A pure decode batch of n requests runs the decode graph of the
smallest captured size >= n, padded with one-token requests; a batch with prefill chunks
runs the mixed graph of the smallest token count that holds it (``MIXED_SIZES``), padded
with one request of the missing tokens, when it has fewer than ``mixed_reqs`` requests.
Larger batches run eagerly.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import torch

from pagedllm.attention.backend import AttentionBackend
from pagedllm.logger import init_logger
from pagedllm.model.decoder import CausalLM, ForwardContext
from pagedllm.worker.input_batch import HostBatch, StepBatch
from pagedllm.worker.input_buffers import InputBuffers, dummy_decode_batch
from pagedllm.worker.step_plan import GraphShape, plan_step

logger = init_logger(__name__)


# Token counts of the mixed (prefill) graphs: every 64 tokens up to 1,024, every 256 up to
# 2,048. A mixed step costs the tokens of its graph, not its own (the padding is computed at
# the GEMM ceiling), so the sizes are dense. Steps past 512 tokens measured as fast eager as
# in a graph when timed alone, but served, an eager step's launch holds the host for its
# device time and is held behind the step in flight (``Executor.launch_blocks``): a served
# prompt beside ~25 decodes (~540 tokens) left 22.0 ms between outputs eager and 14.9 ms in
# the 576-token graph (benchmarks/RESULTS.md, "Mixed CUDA graphs against eager steps" and
# the two 16 req/s records after it).
MIXED_SIZES = (*range(128, 1024, 64), *range(1024, 2049, 256))
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
    """The captured graphs, by shape: decode graphs by request count, mixed ones by token
    count. Each was captured on metadata from ``backend.capture_metadata`` over views of
    ``buffers``; a replay loads the batch into those buffers, padded to the graph's shape
    (``plan_step``), and runs no backend code."""

    def __init__(
        self,
        model: CausalLM,
        backend: AttentionBackend,
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
        self.sizes = sizes or capture_sizes(max_num_seqs)
        # Decode graphs: n one-token requests, split-KV as the backend splits that many.
        self.decode_shapes = {
            n: GraphShape(n, n, mixed=False, num_segments=backend.segments_for(n, 1, kv_heads))
            for n in self.sizes
        }
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # Batches with prefill chunks: padded to a token count, always mixed_reqs requests
        # (the last real one is followed by the padding request, then empty ones).
        self.mixed_reqs = min(max_num_seqs, MIXED_MAX_REQS) + 1
        self.mixed_sizes = [n for n in MIXED_SIZES if n <= buffers.max_tokens]
        self.mixed: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _mixed_shape(self, tokens: int) -> GraphShape:
        return GraphShape(tokens, self.mixed_reqs, mixed=True)

    @torch.inference_mode()
    def capture(self) -> float:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        buffers = self.buffers
        one = dummy_decode_batch(1, buffers.block_size, buffers.scratch_block)
        for tokens in reversed(self.mixed_sizes):  # largest first: later ones reuse memory
            shape = self._mixed_shape(tokens)
            step = buffers.load(one, plan_step(one, shape.num_segments, shape))
            self.mixed[tokens] = self._capture_one(step, pool)
        for size in reversed(self.sizes):
            dummy = dummy_decode_batch(size, buffers.block_size, buffers.scratch_block)
            shape = self.decode_shapes[size]
            step = buffers.load(dummy, plan_step(dummy, shape.num_segments, shape))
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

    def _capture_one(self, step: StepBatch, pool: Any) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        metadata = self.backend.capture_metadata(step.attn)
        ctx = ForwardContext(self.backend, metadata, self.kv_caches)
        for _ in range(2):  # compile the kernels, settle the allocator, allocate scratch
            self.model(step.input_ids, step.positions, ctx)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            hidden = self.model(step.input_ids, step.positions, ctx)
        return graph, hidden

    def run(self, batch: HostBatch) -> tuple[torch.Tensor, StepBatch] | None:
        """Replay the smallest graph that fits the batch: its real tokens' hidden states
        and the step's batch (padded: its input rows past the real ones are padding), or
        None when no captured graph fits (the caller runs it eagerly)."""
        if batch.is_pure_decode:
            i = bisect.bisect_left(self.sizes, batch.num_reqs)
            if i == len(self.sizes) or not self.graphs:
                return None
            shape = self.decode_shapes[self.sizes[i]]
            graph, hidden = self.graphs[shape.num_reqs]
        else:
            i = bisect.bisect_left(self.mixed_sizes, batch.num_tokens)
            if i == len(self.mixed_sizes) or batch.num_reqs >= self.mixed_reqs:
                return None
            shape = self._mixed_shape(self.mixed_sizes[i])
            graph, hidden = self.mixed[shape.num_tokens]
        step = self.buffers.load(batch, plan_step(batch, shape.num_segments, shape))
        graph.replay()
        return hidden[: batch.num_tokens], step
