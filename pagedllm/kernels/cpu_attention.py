"""Decode attention on the CPU over the paged KV cache in place (``pagedllm/csrc/
paged_decode_cpu.cpp``, built by ``cpu_extension``): one query token per sequence, the
query heads sharing a KV head in one pass, online softmax, sums in float32.

Invariants: q [n, heads, head_dim] and the layer's cache [2, blocks, block_size, kv_heads,
head_dim] in one dtype (float32, float16 or bfloat16), head_dim a multiple of 8, at most
``MAX_GROUP`` query heads per KV head; block_table [n, max_blocks] and seq_lens [n] int64.
"""

from __future__ import annotations

import torch

from pagedllm.kernels import cpu_extension

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_GROUP = 16  # query heads per KV head


def supports(q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Whether ``paged_decode`` takes these (else the torch path runs)."""
    return (
        q.device.type == "cpu"
        and q.dtype in DTYPES
        and kv_cache.dtype == q.dtype
        and q.shape[-1] % 8 == 0
        and q.shape[1] // kv_cache.shape[3] <= MAX_GROUP
        and kv_cache.is_contiguous()
    )


def paged_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """Attention output [n, heads, head_dim] in q's dtype."""
    out = cpu_extension.module().paged_decode(
        q.contiguous(), kv_cache, block_table, seq_lens, scale, window or 0
    )
    return out.to(q.dtype)
