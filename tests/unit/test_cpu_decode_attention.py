"""The CPU's C++ decode attention (the paged cache read in place) against the torch path
(blocks gathered, SDPA with a length mask): grouped heads, scattered blocks, lengths that
end mid-block, sliding windows, each of the CPU's dtypes; and what it refuses."""

from __future__ import annotations

import pytest
import torch

from pagedllm.attention.backend import create_backend
from pagedllm.attention.torch_backend import (
    TorchAttentionMetadata,
    _decode,
    _kernel_decode,
    _Reader,
)
from pagedllm.kernels.cpu_attention import paged_decode, supports

BLOCK = 16


def decode_case(lens: list[int], dtype: torch.dtype, heads: int = 6, kv_heads: int = 2):
    generator = torch.Generator().manual_seed(sum(lens))
    num_blocks, d = 40, 64
    cache = torch.randn(2, num_blocks, BLOCK, kv_heads, d, generator=generator).to(dtype)
    q = torch.randn(len(lens), heads, d, generator=generator).to(dtype)
    max_blocks = -(-max(lens) // BLOCK)
    order = torch.randperm(num_blocks, generator=generator)  # blocks scattered in the cache
    table = order[: len(lens) * max_blocks].view(len(lens), max_blocks)
    seq_lens = torch.tensor(lens)
    span = max_blocks * BLOCK
    valid = (torch.arange(span)[None, :] < seq_lens[:, None]).view(len(lens), 1, 1, span)
    metadata = TorchAttentionMetadata(
        torch.zeros(len(lens), dtype=torch.long), len(lens), table.reshape(-1), max_blocks,
        valid, [], seq_lens,
    )  # fmt: skip
    return q, _Reader(cache, torch.ones(2), dtype), metadata


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window", [None, 9])
def test_the_kernel_matches_the_gathered_sdpa(dtype, window):
    q, read, metadata = decode_case([1, 17, 50, 33], dtype)
    assert supports(q, read.kv_cache)
    got = _kernel_decode(q, read, metadata, 0.125, window)
    want = _decode(q, read, metadata, 0.125, window)
    assert got.dtype == dtype and got.shape == want.shape
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)


def test_one_kv_head_per_query_head_and_one_for_all():
    for heads, kv_heads in ((4, 4), (8, 1)):
        q, read, metadata = decode_case([5, 40], torch.float32, heads, kv_heads)
        torch.testing.assert_close(
            _kernel_decode(q, read, metadata, 0.1, None), _decode(q, read, metadata, 0.1, None)
        )


def test_a_block_id_outside_the_cache_or_a_wrong_dtype_is_refused():
    q, read, metadata = decode_case([20], torch.float32)
    table = metadata.decode_block_ids.view(1, -1).clone()
    table[0, 1] = 40
    with pytest.raises(RuntimeError, match="outside the cache"):
        paged_decode(q, read.kv_cache, table, metadata.decode_seq_lens, 1.0, None)
    with pytest.raises(RuntimeError, match="int64"):
        paged_decode(q, read.kv_cache, table.int(), metadata.decode_seq_lens, 1.0, None)
    assert not supports(q, read.kv_cache.to(torch.float16))  # the torch path takes those


def test_the_cpu_backend_decodes_by_the_kernel():
    assert create_backend("cpu").cpu_kernels
