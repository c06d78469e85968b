"""What every attention backend needs to know about one flat ragged batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class CommonAttentionMetadata:
    """One step's batch: ``num_reqs`` query segments laid end to end.

    Invariants: requests with a single query token (decodes) come first, ``num_decodes`` of
    them; request ``i``'s queries are tokens ``[query_start_loc[i], query_start_loc[i+1])``
    of the batch and sit at positions ``[seq_lens[i] - query_len_i, seq_lens[i])``.
    """

    num_reqs: int
    num_tokens: int
    num_decodes: int
    block_size: int
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32, on device
    seq_lens: torch.Tensor  # [num_reqs] int32, on device
    block_table: torch.Tensor  # [num_reqs, max_blocks] int32, on device (padding: 0)
    slot_mapping: torch.Tensor  # [num_tokens] int64, on device
    # Host copies, for backends that loop over requests and for kernel launch grids.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    max_query_len: int
    max_seq_len: int
    # Split-KV segments for the CUDA kernel (fixed per captured graph); 1 elsewhere.
    num_segments: int = 1
    # A decode batch on CUDA: [num_reqs] int32 on device, the requests longest first (the
    # order the decode kernel starts its programs in); None elsewhere.
    decode_order: torch.Tensor | None = None


class KVWrite(NamedTuple):
    """Where one layer's new K and V go when the rotary op writes them (``DeviceOps.rope_qk``):
    the layer's cache [2, blocks, block_size, kv heads, dim], each token's slot [tokens]
    int64 (block * block_size + offset; padding: the scratch block), and K's and V's scales
    [2] float32 (an FP8 cache stores value / scale, saturated, as every backend does)."""

    kv_cache: torch.Tensor
    slot_mapping: torch.Tensor
    kv_scale: torch.Tensor
