"""The Triton backend's split-KV choice for steps with prefill: an eager chunk over a long
history splits its keys across programs when its grid is small (``prefill_segments``), a
captured step keeps its graph's count, and the split output matches the reference."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.attention.metadata import CommonAttentionMetadata
    from pagedllm.attention.triton_backend import TritonAttentionBackend
    from pagedllm.kernels import paged_attention as pa
    from tests.gpu.test_paged_attention_kernel import reference

    gen = torch.Generator().manual_seed(7)
    new, hist, block = 40, 6200, 16
    total = new + hist
    blocks = -(-total // block)
    kv = torch.randn(2, blocks + 2, block, 2, 64, generator=gen)
    table = torch.randperm(blocks + 2, generator=gen)[:blocks].to(torch.int32)[None, :]
    q = torch.randn(new, 8, 64, generator=gen)
    qsl, lens = [0, new], [total]
    common = CommonAttentionMetadata(
        num_reqs=1, num_tokens=new, num_decodes=0, block_size=block,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(lens, dtype=torch.int32), block_table=table,
        slot_mapping=torch.zeros(new, dtype=torch.int64), query_start_loc_cpu=qsl,
        seq_lens_cpu=lens, max_query_len=new, max_seq_len=total,
    )
    # 4 multiprocessors: (40 // 32 + 1) x 2 KV heads = 4 programs, under 2 waves: split in 4
    backend = TritonAttentionBackend(num_sms=4)
    assert pa.prefill_segments(q, kv, 1, new, total, 4) == 4
    want = reference(q, kv, table, lens, qsl, 0.125)
    k = v = torch.zeros(new, 2, 64)  # the chunk's K/V are already in the cache
    for metadata, split in ((backend.build_metadata(common), True),
                            (backend.capture_metadata(common), False)):
        assert metadata.split_prefill is split
        out = backend.forward(q, k, v, kv, metadata, 0.125, torch.ones(2), kv_written=True)
        assert ((out.double() - want).norm() / want.norm()).item() < 1e-5, split
    assert not backend._scratch  # the eager split's partials are not kept per shape
    print("SPLIT_OK")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernel")
def test_an_eager_chunk_over_a_long_history_splits_and_matches() -> None:
    run_interpreted(CHECK, "SPLIT_OK", timeout=300)


def test_prefill_segments_fill_a_small_grid_only_over_long_histories() -> None:
    """llama-8b's heads (32 over 8 KV heads: 32 queries a 128-row tile) on 132
    multiprocessors: a later turn's 616 tokens after 6,144 make 160 programs, split in 4;
    after 3,072 (where the split measured slower), a 4,096-token chunk (1,032 programs)
    and a fresh prompt they do not."""
    pytest.importorskip("triton")
    from pagedllm.kernels.paged_attention import prefill_segments

    kv = torch.empty(2, 1, 16, 8, 128, device="meta", dtype=torch.bfloat16)
    q = torch.empty(616, 32, 128, device="meta", dtype=torch.bfloat16)
    assert prefill_segments(q, kv, 1, 616, 616 + 6144, 132) == 4
    assert prefill_segments(q[:64], kv, 1, 64, 64 + 6080, 132) == 4  # 6,144 keys: the least
    assert prefill_segments(q[:64], kv, 1, 64, 64 + 6079, 132) == 1
    assert prefill_segments(q, kv, 1, 616, 616 + 3072, 132) == 1
    assert prefill_segments(q, kv, 1, 616, 616, 132) == 1
    big = torch.empty(4096, 32, 128, device="meta", dtype=torch.bfloat16)
    assert prefill_segments(big, kv, 1, 4096, 4096 + 6144, 132) == 1  # 1,032 programs
