"""Portable attention in plain torch: the CPU backend and the reference for kernels.

Single-token queries (decodes) are batched: their blocks are gathered into a padded
[decodes, kv_heads, max_len, head_dim] tensor and one ``scaled_dot_product_attention`` call
attends with a length mask. Multi-token queries (prefill chunks) go one request at a time;
a chunk with no cached prefix attends to its own fresh K/V without touching the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedllm.attention.metadata import CommonAttentionMetadata


@dataclass
class PrefillSpan:
    start: int  # first token of the chunk in the flat batch
    end: int
    seq_len: int  # context length once the chunk is in (cached prefix + chunk)
    block_ids: torch.Tensor | None  # blocks holding the context; None: no cached prefix
    mask: torch.Tensor | None  # [query_len, seq_len] bool (True = attend); None: plain causal


@dataclass
class TorchAttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64
    num_decodes: int
    decode_block_table: torch.Tensor | None  # [num_decodes, max_blocks] int64
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillSpan]


class TorchAttentionBackend:
    def build_metadata(self, common: CommonAttentionMetadata) -> TorchAttentionMetadata:
        num_decodes = common.num_decodes
        decode_table = decode_mask = None
        if num_decodes:
            lens = common.seq_lens_cpu[:num_decodes]
            table = common.block_table[:num_decodes].long()
            max_blocks = table.shape[1]
            decode_table = table
            span = max_blocks * common.block_size
            positions = torch.arange(span, device=table.device)
            seq_lens = torch.tensor(lens, device=table.device)
            decode_mask = (positions[None, :] < seq_lens[:, None]).view(num_decodes, 1, 1, span)
        prefills = [self._span(common, i) for i in range(num_decodes, common.num_reqs)]
        return TorchAttentionMetadata(
            common.slot_mapping, num_decodes, decode_table, decode_mask, prefills
        )

    @staticmethod
    def _span(common: CommonAttentionMetadata, i: int) -> PrefillSpan:
        start, end = common.query_start_loc_cpu[i], common.query_start_loc_cpu[i + 1]
        seq_len = common.seq_lens_cpu[i]
        query_len = end - start
        if seq_len == query_len:
            return PrefillSpan(start, end, seq_len, None, None)
        num_blocks = -(-seq_len // common.block_size)
        block_ids = common.block_table[i, :num_blocks].long()
        device = common.block_table.device
        prefix = seq_len - query_len
        rows = torch.arange(query_len, device=device)[:, None]
        cols = torch.arange(seq_len, device=device)[None, :]
        return PrefillSpan(start, end, seq_len, block_ids, cols <= rows + prefix)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TorchAttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, metadata.slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, metadata.slot_mapping, v)
        out = torch.empty_like(q)
        if metadata.num_decodes:
            n = metadata.num_decodes
            out[:n] = _decode(q[:n], k_cache, v_cache, metadata, scale)
        for span in metadata.prefills:
            out[span.start : span.end] = _prefill(q, k, v, k_cache, v_cache, span, scale)
        return out


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """[..., blocks] ids -> [..., blocks * block_size, kv_heads, head_dim]."""
    gathered = cache[block_ids]
    return gathered.flatten(-4, -3)


def _decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    metadata: TorchAttentionMetadata,
    scale: float,
) -> torch.Tensor:
    table = metadata.decode_block_table
    keys = _gather(k_cache, table).transpose(1, 2)  # [n, kv_heads, len, head_dim]
    values = _gather(v_cache, table).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), keys, values, attn_mask=metadata.decode_mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)


def _prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    span: PrefillSpan,
    scale: float,
) -> torch.Tensor:
    query = q[span.start : span.end].transpose(0, 1)  # [heads, len, head_dim]
    if span.block_ids is None:
        keys = k[span.start : span.end].transpose(0, 1)
        values = v[span.start : span.end].transpose(0, 1)
        out = F.scaled_dot_product_attention(
            query, keys, values, is_causal=True, scale=scale, enable_gqa=True
        )
    else:
        keys = _gather(k_cache, span.block_ids)[: span.seq_len].transpose(0, 1)
        values = _gather(v_cache, span.block_ids)[: span.seq_len].transpose(0, 1)
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=span.mask, scale=scale, enable_gqa=True
        )
    return out.transpose(0, 1)
