"""The CUDA attention backend: new K/V written by slot, then the Triton paged-attention
kernel (``pagedllm.kernels.paged_attention``) over the flat ragged batch.

Metadata is a handful of tensor references and ints, so a captured CUDA graph replays it
from persistent buffers. Decode-only batches too small to fill the GPU split each
request's KV range across ``num_segments`` programs (flash-decoding), the last program of
each request and KV head merging (the kernel's counters, kept zero between calls). Steps
with prefill that run eagerly choose their split per call from q's shape
(``paged_attention.prefill_segments``: a chunk over a long history makes a grid of about
one wave); captured ones keep their graph's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.attention.torch_backend import write_kv_torch

MAX_SEGMENTS = 16  # = pagedllm.kernels.paged_attention.MAX_SEGMENTS (kept import-free)


@dataclass
class TritonAttentionMetadata:
    slot_mapping: torch.Tensor  # [tokens] int64; padded tokens point at the scratch block
    block_table: torch.Tensor  # [>= reqs, max_blocks] int32
    seq_lens: torch.Tensor  # [>= reqs] int32
    query_start_loc: torch.Tensor  # [>= reqs + 1] int32
    num_reqs: int
    max_query_len: int
    num_segments: int
    decode_order: torch.Tensor | None  # see CommonAttentionMetadata
    max_seq_len: int
    # An eager step with prefill: forward picks its split from the batch (not captured, so
    # its float32 partials are allocated per call rather than kept per shape).
    split_prefill: bool = False


class TritonAttentionBackend:
    def __init__(self, num_sms: int) -> None:
        self.num_sms = num_sms  # the GPU's multiprocessors: split-KV fills them
        self._scratch: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def segments_for(self, num_reqs: int, max_query_len: int, kv_heads: int) -> int:
        """Split the KV range when a decode batch would leave multiprocessors idle."""
        if max_query_len != 1:
            return 1
        programs = num_reqs * kv_heads
        segments = 1
        while segments < MAX_SEGMENTS and programs * segments < 2 * self.num_sms:
            segments *= 2
        return segments

    def capture_metadata(self, common: CommonAttentionMetadata) -> TritonAttentionMetadata:
        """The step's metadata is already graph-safe: tensor references (views of the
        runner's persistent buffers) and the padded shape's ints. The split-KV scratch
        (``_partials``) is allocated by the first warm-up pass and kept per shape."""
        return replace(self.build_metadata(common), split_prefill=False)

    def build_metadata(self, common: CommonAttentionMetadata) -> TritonAttentionMetadata:
        return TritonAttentionMetadata(
            slot_mapping=common.slot_mapping,
            block_table=common.block_table,
            seq_lens=common.seq_lens,
            query_start_loc=common.query_start_loc,
            num_reqs=common.num_reqs,
            max_query_len=common.max_query_len,
            num_segments=common.num_segments,
            decode_order=common.decode_order,
            max_seq_len=common.max_seq_len,
            split_prefill=common.max_query_len > 1,
        )

    def slot_mapping(self, metadata: TritonAttentionMetadata) -> torch.Tensor:
        return metadata.slot_mapping

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TritonAttentionMetadata,
        scale: float,
        kv_scale: torch.Tensor,
        window: int | None = None,
        kv_written: bool = False,
    ) -> torch.Tensor:
        from pagedllm.kernels.paged_attention import paged_attention, prefill_segments

        if not kv_written:
            slots = metadata.slot_mapping
            if k.shape[1] & (k.shape[1] - 1) == 0:  # the fused kernel tiles 2^n heads
                from pagedllm.kernels.fused_ops import write_kv

                write_kv(k, v, kv_cache, slots, kv_scale)
            else:
                write_kv_torch(kv_cache, slots, k, v, kv_scale)
        q = q.contiguous() if q.stride(2) != 1 else q
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        segments, partials = metadata.num_segments, None
        if metadata.split_prefill:
            segments = prefill_segments(
                q, kv_cache, metadata.num_reqs, metadata.max_query_len, metadata.max_seq_len,
                self.num_sms,
            )  # fmt: skip
            # A step with prefill merges in a second kernel: no counters (their zeroing
            # would be one more launch a call).
            partials = split_scratch(q, segments) if segments > 1 else None
        elif segments > 1:
            partials = self._partials(q, segments, kv_cache.shape[3])
        return paged_attention(
            q, kv_cache, out, metadata.block_table, metadata.seq_lens, metadata.query_start_loc,
            metadata.num_reqs, metadata.max_query_len, scale, segments, partials,
            kv_scale=kv_scale, window=window, order=metadata.decode_order,
        )  # fmt: skip

    def _partials(self, q: torch.Tensor, segments: int, kv_heads: int) -> tuple[torch.Tensor, ...]:
        """Split-KV scratch with the merge counters, kept per shape (and so stable across
        CUDA graph replays). Every layer reuses it: each attention call leaves the counters
        zero, as the next one needs them."""
        key = (*q.shape, segments, kv_heads)
        if key not in self._scratch:
            self._scratch[key] = split_scratch(q, segments, kv_heads)
        return self._scratch[key]


def split_scratch(
    q: torch.Tensor, segments: int, kv_heads: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Float32 split-KV scratch for q's shape: the un-normalised sums [tokens, heads,
    segments, dim] and the row max and sum [tokens, heads, segments]; with ``kv_heads``,
    then the int32 counters [tokens, kv_heads], zero, with which a decode batch merges its
    segments inside the attention kernel (``paged_attention``)."""
    tokens, heads, dim = q.shape
    acc = torch.empty(tokens, heads, segments, dim, dtype=torch.float32, device=q.device)
    stats = torch.empty(2, tokens, heads, segments, dtype=torch.float32, device=q.device)
    if kv_heads is None:
        return acc, stats[0], stats[1]
    counters = torch.zeros(tokens, kv_heads, dtype=torch.int32, device=q.device)
    return acc, stats[0], stats[1], counters
