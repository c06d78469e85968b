"""Portable attention in plain torch: the CPU backend and the reference for kernels.

Single-token queries (decodes) are batched. On the CPU with pagedllm's C++ kernels
(``cpu_kernels``), one call attends to every sequence's keys in place in the paged cache
(``kernels/cpu_attention.py``); otherwise their blocks are gathered into a padded
[decodes, kv_heads, max_len, head_dim] tensor and one ``scaled_dot_product_attention`` call
attends with a length mask. Multi-token queries (prefill chunks) go one request at a time;
a chunk with no cached prefix attends to its own fresh K/V without reading the cache
(unless the cache is FP8: then, as every other query, to the values read back from it). A
chunk in a layer without a window, after a cached prefix or not, goes by two batched
products around a softmax in tiles of queries of about ``TILE_SCORES`` scores
(``_attend_after_prefix``); a windowed chunk by the products where all its scores fit, else
by SDPA with the window's mask.
An FP8 cache is written as ``value / scale`` and read back in float32 times the scale.
A layer with a sliding window masks the keys before its window too (masks made once per
step and window, shared by the layers that have it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.kernels.cpu_attention import paged_decode, supports

# Score elements a masked prefill chunk may hold at once (64 MiB of float32): up to it, two
# batched products and a softmax; past it, SDPA. On the CPU the explicit form is 1.2-2x
# faster than SDPA with a mask (torch 2.13, a 2-core AVX2 host; short chunks over long
# cached prefixes gain most: a multi-turn chat's next message).
SCORES_LIMIT = 1 << 24
# A chunk in a layer without a window goes in tiles of queries of about this many scores (4
# MiB of float32, which the products and the softmax pass between them through the cache), at
# least MIN_TILE_ROWS queries a tile (fewer pay the per-tile calls more than they save). On
# the 2-core host: 6,000 cached + 2,048 new tokens' attention at SmolLM2's shapes 1,067 ms
# by SDPA's masked path, 718 ms in 16M-score tiles, 377-403 ms in these.
TILE_SCORES = 1 << 20
MIN_TILE_ROWS = 32


@dataclass
class PrefillSpan:
    start: int  # first token of the chunk in the flat batch
    end: int
    seq_len: int  # context length once the chunk is in (cached prefix + chunk)
    block_ids: torch.Tensor  # blocks holding the context
    mask: torch.Tensor | None  # [query_len, seq_len] bool (True = attend); None: no cached
    # prefix, plain causal
    _windowed: dict[int, torch.Tensor] = field(default_factory=dict)
    _biases: dict[tuple[int | None, int], torch.Tensor] = field(default_factory=dict)

    def bias_for(self, window: int | None, group: int) -> torch.Tensor:
        """``mask_for(window)`` as an additive float32 bias (0 or -inf), its rows repeated
        for the ``group`` query heads of a KV head; made once per step for all layers."""
        key = (window, group)
        if key not in self._biases:
            mask = self.mask_for(window)
            assert mask is not None, "a chunk with no cached prefix and no window is causal"
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            self._biases[key] = bias.masked_fill_(~mask, float("-inf")).repeat(group, 1)
        return self._biases[key]

    def mask_for(self, window: int | None) -> torch.Tensor | None:
        """The mask for a layer with this window: query j (position seq_len - query_len + j)
        sees keys in (position - window, position]."""
        if window is None:
            return self.mask
        if window not in self._windowed:
            query_len = self.end - self.start
            device = self.block_ids.device
            positions = torch.arange(query_len, device=device)[:, None] + (self.seq_len - query_len)
            keys = torch.arange(self.seq_len, device=device)[None, :]
            self._windowed[window] = (keys <= positions) & (keys > positions - window)
        return self._windowed[window]


@dataclass
class TorchAttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64
    num_decodes: int
    decode_block_ids: torch.Tensor | None  # [num_decodes * max_blocks] int64, row-major
    decode_max_blocks: int
    decode_valid: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillSpan]
    decode_seq_lens: torch.Tensor | None = None  # [num_decodes] int64
    # The decode masks as additive biases in the model's dtype, made once per step (per
    # dtype and window).
    _decode_bias: dict[tuple[torch.dtype, int | None], torch.Tensor] = field(default_factory=dict)

    def decode_bias(self, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
        key = (dtype, window)
        if key not in self._decode_bias:
            assert self.decode_valid is not None and self.decode_seq_lens is not None
            valid = self.decode_valid
            if window is not None:  # the query sits at seq_len - 1
                positions = torch.arange(valid.shape[-1], device=valid.device)
                lower = (self.decode_seq_lens - window).view(-1, 1, 1, 1)
                valid = valid & (positions.view(1, 1, 1, -1) >= lower)
            bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
            self._decode_bias[key] = bias.masked_fill_(~valid, float("-inf"))
        return self._decode_bias[key]


class TorchAttentionBackend:
    def __init__(self, cpu_kernels: bool = False) -> None:
        self.cpu_kernels = cpu_kernels  # decode by the C++ kernel where it takes the inputs

    def segments_for(self, num_reqs: int, max_query_len: int, kv_heads: int) -> int:
        """No split-KV: each request's keys are attended by one SDPA call."""
        return 1

    def capture_metadata(self, common: CommonAttentionMetadata) -> TorchAttentionMetadata:
        """Not capturable: the metadata holds host lists and masks of this step's lengths,
        and the prefill path loops over requests in Python."""
        raise ValueError(
            "CUDA graphs need the Triton attention backend, but PAGEDLLM_ATTENTION_BACKEND="
            "torch selects the torch one: set enforce_eager=True (--enforce-eager) to run it "
            "eagerly, or unset PAGEDLLM_ATTENTION_BACKEND."
        )

    def slot_mapping(self, metadata: TorchAttentionMetadata) -> torch.Tensor:
        return metadata.slot_mapping

    def build_metadata(self, common: CommonAttentionMetadata) -> TorchAttentionMetadata:
        num_decodes = common.num_decodes
        block_ids, max_blocks, valid, seq_lens = None, 0, None, None
        if num_decodes:
            lens = common.seq_lens_cpu[:num_decodes]
            max_blocks = -(-max(lens) // common.block_size)
            table = common.block_table[:num_decodes, :max_blocks].long()
            block_ids = table.reshape(-1)
            span = max_blocks * common.block_size
            positions = torch.arange(span, device=table.device)
            seq_lens = torch.tensor(lens, device=table.device)
            valid = (positions[None, :] < seq_lens[:, None]).view(num_decodes, 1, 1, span)
        prefills = [self._span(common, i) for i in range(num_decodes, common.num_reqs)]
        return TorchAttentionMetadata(
            common.slot_mapping, num_decodes, block_ids, max_blocks, valid, prefills, seq_lens
        )

    @staticmethod
    def _span(common: CommonAttentionMetadata, i: int) -> PrefillSpan:
        start, end = common.query_start_loc_cpu[i], common.query_start_loc_cpu[i + 1]
        seq_len = common.seq_lens_cpu[i]
        query_len = end - start
        num_blocks = -(-seq_len // common.block_size)
        block_ids = common.block_table[i, :num_blocks].long()
        if seq_len == query_len:
            return PrefillSpan(start, end, seq_len, block_ids, None)
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
        kv_scale: torch.Tensor,
        window: int | None = None,
        kv_written: bool = False,
    ) -> torch.Tensor:
        if not kv_written:
            write_kv_torch(kv_cache, metadata.slot_mapping, k, v, kv_scale)
        read = _Reader(kv_cache, kv_scale, q.dtype)
        n = metadata.num_decodes
        decode = _kernel_decode if self.cpu_kernels and supports(q, kv_cache) else _decode
        if not metadata.prefills:  # a pure decode step: no stitching needed
            return decode(q, read, metadata, scale, window)
        if n == 0 and len(metadata.prefills) == 1:
            return _prefill(q, k, v, read, metadata.prefills[0], scale, window)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if n:
            out[:n] = decode(q[:n], read, metadata, scale, window)
        for span in metadata.prefills:
            out[span.start : span.end] = _prefill(q, k, v, read, span, scale, window)
        return out


def write_kv_torch(
    kv_cache: torch.Tensor,
    slots: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_scale: torch.Tensor,
) -> None:
    """New K and V [tokens, kv_heads, head_dim] into the cache by slot; an FP8 cache stores
    ``value / kv_scale[0 or 1]`` saturated to the format's range."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    if kv_cache.dtype == k.dtype:
        kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k)
        kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v)
        return
    limit = torch.finfo(kv_cache.dtype).max
    for i, values in enumerate((k, v)):
        stored = (values.float() / kv_scale[i]).clamp(-limit, limit).to(kv_cache.dtype)
        # Copied as bytes: index_copy_ has no FP8 kernel on the CPU.
        rows = kv_cache[i].view(torch.uint8).view(-1, num_kv_heads, head_dim)
        rows.index_copy_(0, slots, stored.view(torch.uint8))


@dataclass
class _Reader:
    """Reads K and V of whole blocks back from one layer's cache, in the compute dtype."""

    kv_cache: torch.Tensor
    kv_scale: torch.Tensor
    dtype: torch.dtype

    @property
    def quantized(self) -> bool:
        return self.kv_cache.dtype != self.dtype

    def __call__(self, block_ids: torch.Tensor) -> torch.Tensor:
        """[2, len(block_ids) * block_size, kv_heads, head_dim], in one copy:
        ``index_select`` over whole blocks is a plain row copy, several times faster than
        advanced indexing."""
        cache = self.kv_cache
        num_blocks, kv_heads, head_dim = cache.shape[1], cache.shape[3], cache.shape[4]
        rows = cache.view(2, num_blocks, -1).index_select(1, block_ids)
        rows = rows.view(2, -1, kv_heads, head_dim)
        if not self.quantized:
            return rows
        return (rows.float() * self.kv_scale.view(2, 1, 1, 1)).to(self.dtype)


def _decode(
    q: torch.Tensor,
    read: _Reader,
    metadata: TorchAttentionMetadata,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """Single-token queries. Grouped-query trick: the query heads that share a KV head are
    laid out as that head's "query positions" ([n, kv_heads, group, head_dim]), so SDPA
    never expands K/V to every query head."""
    n, num_heads, head_dim = q.shape
    kv_heads = read.kv_cache.shape[3]
    assert metadata.decode_block_ids is not None
    kv = read(metadata.decode_block_ids).view(2, n, -1, kv_heads, head_dim)
    keys, values = kv[0].transpose(1, 2), kv[1].transpose(1, 2)  # [n, kv_heads, len, dim]
    grouped = q.reshape(n, kv_heads, num_heads // kv_heads, head_dim)
    bias = metadata.decode_bias(q.dtype, window)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=bias, scale=scale)
    return out.reshape(n, num_heads, head_dim)


def _kernel_decode(
    q: torch.Tensor,
    read: _Reader,
    metadata: TorchAttentionMetadata,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """Single-token queries by the C++ kernel, reading the cache in place."""
    assert metadata.decode_block_ids is not None and metadata.decode_seq_lens is not None
    table = metadata.decode_block_ids.view(q.shape[0], metadata.decode_max_blocks)
    return paged_decode(q, read.kv_cache, table, metadata.decode_seq_lens, scale, window)


def _prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    read: _Reader,
    span: PrefillSpan,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    query = q[span.start : span.end].transpose(0, 1)  # [heads, len, head_dim]
    if span.mask is None and not read.quantized:
        keys = k[span.start : span.end].transpose(0, 1)
        values = v[span.start : span.end].transpose(0, 1)
    else:
        kv = read(span.block_ids)[:, : span.seq_len]
        keys, values = kv[0].transpose(0, 1), kv[1].transpose(0, 1)
    # Without a window, with a cached prefix or none: SDPA's masked and causal paths ran at
    # 23-31 GFLOP/s on a 2-core CPU, the tiles at 50-100 (2,048 new tokens at SmolLM2's
    # shapes, no prefix: 212 against 59 ms).
    if window is None:
        return _attend_after_prefix(query, keys, values, scale).transpose(0, 1)
    if query.shape[0] * query.shape[1] * keys.shape[1] <= SCORES_LIMIT:
        bias = span.bias_for(window, query.shape[0] // keys.shape[0])
        return _attend_with_bias(query, keys, values, bias, scale).transpose(0, 1)
    out = F.scaled_dot_product_attention(
        query, keys, values, attn_mask=span.mask_for(window), scale=scale, enable_gqa=True
    )
    return out.transpose(0, 1)


def _attend_with_bias(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Masked attention as two batched products and a softmax in float32: query [heads,
    len, dim]; keys, values [kv_heads, seq_len, dim]; ``bias`` [group * len, seq_len] (0 or
    -inf, each query row once per query head of a KV head). The query heads sharing a KV
    head are stacked as its rows, so K/V are never repeated."""
    heads, length, dim = query.shape
    kv_heads = keys.shape[0]
    grouped = query.reshape(kv_heads, heads // kv_heads * length, dim).float()
    scores = torch.baddbmm(bias, grouped, keys.float().transpose(1, 2), alpha=scale)
    out = torch.bmm(scores.softmax(dim=-1), values.float())
    return out.view(heads, length, dim).to(query.dtype)


def _attend_after_prefix(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    """A chunk after a cached prefix (``prefix`` = seq_len - len, 0 for none), no window:
    query [heads, len, dim]; keys, values [kv_heads, seq_len, dim], the chunk's own last.
    Query j sees keys [0, prefix + j].

    In tiles of queries of about ``TILE_SCORES`` scores (SDPA's masked path ran at 30-45
    GFLOP/s on a 2-core CPU, the tiles at 50-90): tile [a, b) reads keys [0, prefix +
    b), every one visible to it but its last b - a, which it sees causally (-inf added in
    place to that corner of the scores), so no mask the size of the scores is built. The
    query heads of a KV head are stacked as its rows, so K/V are never repeated."""
    heads, length, dim = query.shape
    kv_heads, seq_len = keys.shape[0], keys.shape[1]
    group, prefix = heads // kv_heads, seq_len - length
    tile = min(length, max(MIN_TILE_ROWS, TILE_SCORES // (heads * seq_len)))
    corner = torch.full((tile, tile), float("-inf"), device=query.device).triu_(1)
    keys, values = keys.float(), values.float()
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    for start in range(0, length, tile):
        end = min(start + tile, length)
        rows, seen = end - start, prefix + end
        # Out of place: the reshape of a one-query tile is a view of the caller's q.
        grouped = query[:, start:end].reshape(kv_heads, group * rows, dim).float() * scale
        scores = torch.bmm(grouped, keys[:, :seen].transpose(1, 2))
        scores.view(kv_heads, group, rows, seen)[..., seen - rows :] += corner[:rows, :rows]
        part = torch.bmm(scores.softmax(dim=-1), values[:, :seen])
        out[:, start:end] = part.view(heads, rows, dim)
    return out
