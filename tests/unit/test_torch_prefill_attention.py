"""The torch backend's masked prefill chunks (a cached prefix, a window): after a prefix,
two batched products around a softmax in query tiles of at most ``SCORES_LIMIT`` score
elements; a window, the products up to it and SDPA past it; all against SDPA's own masked
attention on the same cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.attention import torch_backend
from pagedllm.attention.torch_backend import PrefillSpan, _prefill, _Reader

HEADS, KV_HEADS, DIM, BLOCK = 6, 2, 16, 4


def chunk(prefix: int, length: int, dtype: torch.dtype) -> tuple:
    """A cache holding ``prefix + length`` keys in shuffled blocks, the chunk's queries, and
    its span as the backend builds it."""
    gen = torch.Generator().manual_seed(prefix * 31 + length)
    seq_len = prefix + length
    blocks = -(-seq_len // BLOCK)
    cache = torch.randn(2, blocks + 3, BLOCK, KV_HEADS, DIM, generator=gen).to(dtype)
    block_ids = torch.randperm(blocks + 3, generator=gen)[:blocks]
    q = torch.randn(length, HEADS, DIM, generator=gen).to(dtype)
    rows = torch.arange(length)[:, None]
    mask = torch.arange(seq_len)[None, :] <= rows + prefix
    # As the backend builds it: no mask for a chunk without a cached prefix.
    return cache, q, PrefillSpan(0, length, seq_len, block_ids, mask if prefix else None)


def expected(cache, q, span: PrefillSpan, window: int | None) -> torch.Tensor:
    kv = cache[:, span.block_ids].reshape(2, -1, KV_HEADS, DIM)[:, : span.seq_len].float()
    mask = span.mask_for(window)  # None: no cached prefix and no window, plain causal
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1), kv[0].transpose(0, 1), kv[1].transpose(0, 1),
        attn_mask=mask, is_causal=mask is None, scale=DIM**-0.5, enable_gqa=True,
    )  # fmt: skip
    return out.transpose(0, 1)


# (SCORES_LIMIT, MIN_TILE_ROWS): one tile (windows: the products); tiles of 4 queries, the
# last shorter (windows: SDPA); tiles of one query (windows: SDPA).
LIMITS = [(torch_backend.SCORES_LIMIT, 32), (0, 4), (0, 1)]


@pytest.mark.parametrize("limit", LIMITS, ids=["whole", "tiles-of-4", "tiles-of-1"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize(
    "prefix, length, window",
    [(37, 9, None), (37, 9, 5), (3, 1, None), (3, 1, 5), (0, 6, 5), (0, 9, None), (0, 1, None)],
)
def test_a_masked_chunk_attends_as_sdpa_does(
    monkeypatch, limit, dtype, tolerance, prefix, length, window
) -> None:
    monkeypatch.setattr(torch_backend, "SCORES_LIMIT", limit[0])
    monkeypatch.setattr(torch_backend, "TILE_SCORES", limit[0])
    monkeypatch.setattr(torch_backend, "MIN_TILE_ROWS", limit[1])
    cache, q, span = chunk(prefix, length, dtype)
    # A chunk with a cached prefix reads every key from the cache; one without takes its
    # fresh K/V (here the same values) and must not read the cache.
    fresh = cache[:, span.block_ids].reshape(2, -1, KV_HEADS, DIM)[:, :length]
    if prefix:
        fresh = torch.full_like(fresh, float("nan"))
        read = _Reader(cache, torch.ones(2), dtype)
    else:
        read = _Reader(torch.full_like(cache, float("nan")), torch.ones(2), dtype)
    q_given = q.clone()
    out = _prefill(q, fresh[0], fresh[1], read, span, DIM**-0.5, window)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.equal(q, q_given)  # the queries are the caller's (a one-query tile's view)
    torch.testing.assert_close(out.float(), expected(cache, q, span, window), atol=tolerance,
                               rtol=tolerance)  # fmt: skip


def test_the_bias_repeats_the_mask_for_each_query_head_of_a_kv_head() -> None:
    _, _, span = chunk(5, 3, torch.float32)
    bias = span.bias_for(None, 3)
    assert bias.shape == (9, 8) and bias is span.bias_for(None, 3)  # made once per step
    for g in range(3):
        assert torch.equal(bias[3 * g : 3 * g + 3] == 0, span.mask)
