"""The paged-attention kernel's code paths on the CPU, under Triton's interpreter in a
subprocess (the interpreter is chosen when triton is imported): mixed batches whose decodes
take their own tile shape, the unmasked loop over tiles every row sees whole, windows,
split-KV decodes merged in base 2 (in a decode batch by the last program of each request
and KV head, whose counters must be zero again after every call), decode batches found
without a search (in the requests' order or another), and a decode batch over an FP8 cache
at its own launch.
tests/gpu/test_paged_attention_kernel.py covers the compiled kernel, every dtype and launch
shape, on a GPU."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from tests.gpu.test_paged_attention_kernel import reference, run_case
    from tests.unit.interpreted import assert_refused
    from pagedllm.kernels.paged_attention import LaunchConfig, paged_attention

    f32 = torch.float32
    cases = [
        # decodes beside prefill chunks with long cached prefixes (unmasked tiles) and fresh
        dict(heads=8, kv_heads=2, query_lens=[1, 1, 40, 1, 70, 1, 17],
             prefixes=[30, 0, 5, 200, 0, 64, 100]),
        # a sliding window over a chunk and decodes
        dict(heads=4, kv_heads=4, query_lens=[1, 33, 1], prefixes=[100, 64, 3], window=20),
        # a decode batch unsplit (one program a request, no search), as given and with
        # its programs taking the requests longest first, unsplit and split
        dict(heads=8, kv_heads=2, query_lens=[1] * 3, prefixes=[0, 5, 200]),
        dict(heads=8, kv_heads=2, query_lens=[1] * 3, prefixes=[0, 5, 200], order=[2, 1, 0]),
        dict(heads=8, kv_heads=2, query_lens=[1] * 4, prefixes=[9, 5, 200, 40], segments=2,
             order=[2, 3, 0, 1]),
        # split-KV decodes, with and without a window
        dict(heads=8, kv_heads=2, query_lens=[1] * 4, prefixes=[0, 5, 200, 333], segments=4),
        dict(heads=8, kv_heads=2, query_lens=[1] * 3, prefixes=[0, 70, 150], segments=4,
             window=33),
        # split-KV prefill chunks beside decodes (an eager step over long histories), and
        # a windowed one
        dict(heads=8, kv_heads=2, query_lens=[1, 40, 1, 70], prefixes=[30, 300, 5, 150],
             segments=4),
        dict(heads=8, kv_heads=2, query_lens=[33, 1], prefixes=[200, 64], segments=2,
             window=50),
        # 32-token blocks, a group of 3 and a 64-key prefill step
        dict(heads=12, kv_heads=4, query_lens=[50, 1, 1, 90], prefixes=[0, 77, 10, 31],
             block_size=32, config=LaunchConfig(64, 4, 2, 64)),
    ]
    # A split decode merged in its last program (the interpreter runs the programs in
    # turn, so the highest segment merges), twice over one scratch: a counter not set back
    # to zero would leave the second call's output unwritten (NaN). G = 1, 2 and 4; in the
    # requests' order and another; and over an FP8 cache (V's scale applied once).
    for group in (1, 2, 4):
        for segments in (2, 4, 16):
            for order in (None, [2, 0, 1]):
                cases.append(dict(heads=2 * group, kv_heads=2, query_lens=[1] * 3,
                                  prefixes=[0, 70, 300], segments=segments, order=order,
                                  calls=2))
    cases.append(dict(heads=8, kv_heads=2, query_lens=[1] * 3, prefixes=[0, 70, 300],
                      segments=4, calls=2, cache_dtype=torch.float8_e4m3fn))
    cases.append(dict(heads=4, kv_heads=2, query_lens=[1] * 3, prefixes=[9, 70, 300],
                      segments=16, order=[1, 2, 0], calls=2, cache_dtype=torch.float8_e4m3fn))
    # Without counters a decode batch merges in the second kernel, as a mixed one does.
    cases.append(dict(heads=8, kv_heads=2, query_lens=[1] * 3, prefixes=[0, 70, 300],
                      segments=4, counters=False))
    for case in cases:
        case = {"seed": 3, "dim": 64, "block_size": 16, "dtype": f32, **case}
        error = run_case(device="cpu", **case)
        assert error < 1e-5, (case, error)
    # A decode batch over an FP8 cache (K and V scaled), at the launch chosen for it.
    gen = torch.Generator().manual_seed(5)
    lens = [5, 140, 300]
    table = torch.randperm(57, generator=gen).to(torch.int32).view(3, 19)  # 304 keys a row
    fp8 = (torch.randn(2, 57, 16, 2, 64, generator=gen) * 0.5).to(torch.float8_e4m3fn)
    scales = torch.tensor([0.7, 1.3])
    q = torch.randn(3, 8, 64, generator=gen)
    out = torch.full_like(q, float("nan"))
    paged_attention(q, fp8, out, table, torch.tensor(lens, dtype=torch.int32),
                    torch.arange(4, dtype=torch.int32), 3, 1, 0.125, kv_scale=scales)
    want = reference(q, fp8.float() * scales.view(2, 1, 1, 1, 1), table, lens, [0, 1, 2, 3],
                     0.125)
    assert ((out.double() - want).norm() / want.norm()).item() < 1e-5
    # bfloat16 queries over it: float16 products (q pre-scaled, K's scale on the scores),
    # as close as bfloat16's own rounding of q and of the output allows.
    q16 = (q * 3).to(torch.bfloat16)
    out16 = torch.full_like(q16, float("nan"))
    paged_attention(q16, fp8, out16, table, torch.tensor(lens, dtype=torch.int32),
                    torch.arange(4, dtype=torch.int32), 3, 1, 0.125, kv_scale=scales)
    want16 = reference(q16.float(), fp8.float() * scales.view(2, 1, 1, 1, 1), table, lens,
                       [0, 1, 2, 3], 0.125)
    assert ((out16.double() - want16).norm() / want16.norm()).item() < 1e-2
    # A bfloat16 q beyond float16's range (after the softmax scale) stays finite.
    q16[0, 0, 0] = 1e7
    paged_attention(q16, fp8, out16, table, torch.tensor(lens, dtype=torch.int32),
                    torch.arange(4, dtype=torch.int32), 3, 1, 0.125, kv_scale=scales)
    assert torch.isfinite(out16).all()
    # The counters: int32, a row a token and a column a KV head.
    parts = (torch.empty(3, 8, 2, 64), torch.empty(3, 8, 2), torch.empty(3, 8, 2))
    for bad in (torch.zeros(3, 2), torch.zeros(2, 2, dtype=torch.int32),
                torch.zeros(3, 4, dtype=torch.int32)):
        assert_refused(lambda: paged_attention(q, fp8, out, table,
                                               torch.tensor(lens, dtype=torch.int32),
                                               torch.arange(4, dtype=torch.int32), 3, 1,
                                               0.125, 2, (*parts, bad), kv_scale=scales),
                       "counters must be")
    # A decode launch (max_query_len 1) must have one token a request.
    q = torch.zeros(3, 8, 64)
    cache = torch.zeros(2, 4, 16, 2, 64)
    ints = torch.zeros(3, 4, dtype=torch.int32)
    assert_refused(lambda: paged_attention(q, cache, torch.zeros_like(q), ints, ints[0],
                                           ints[0], 2, 1, 0.125), "one token a request")
    # An order is for decode batches, one int32 entry a request.
    q1 = torch.zeros(2, 8, 64)
    assert_refused(lambda: paged_attention(q1, cache, torch.zeros_like(q1), ints, ints[0],
                                           ints[0], 2, 1, 0.125, order=ints[0, :1]),
                   "order is for decode batches")
    print("ATTENTION_OK")
    """
)


def test_the_launch_is_chosen_by_batch_and_cache() -> None:
    """Decodes over an FP8 cache (split or not) take the launch with registers capped;
    bfloat16 caches the decode launch; steps with prefill the prefill launch."""
    pytest.importorskip("triton")
    from pagedllm.kernels import attention_launch as al

    assert al.launch_config(1, True) == al.FP8_DECODE_CONFIG
    assert al.FP8_DECODE_CONFIG.max_registers == 128
    assert al.register_cap(al.FP8_DECODE_CONFIG, interpreted=False) == {"maxnreg": 128}
    assert al.register_cap(al.FP8_DECODE_CONFIG, interpreted=True) == {}
    assert al.register_cap(al.DECODE_CONFIG, interpreted=False) == {}
    assert al.launch_config(1, False) == al.DECODE_CONFIG
    assert al.launch_config(7, True) == al.prefill_config() == al.PREFILL_CONFIG


def test_each_gpu_takes_its_own_launches() -> None:
    """Tables by a part of the GPU's name; any other GPU (or none) takes the H200's."""
    pytest.importorskip("triton")
    from pagedllm.kernels import attention_launch as al

    h100 = al.launches_for("NVIDIA H100 80GB HBM3")
    assert h100 is al.H100 and al.launch_config(1, False, h100).num_stages == 2
    assert al.launches_for("NVIDIA H200") is al.H200
    assert al.launch_config(1, False, al.H200) == al.DECODE_CONFIG
    assert al.launches_for("NVIDIA A100-SXM4-80GB") is al.H200
    assert al.launches_for(None) is al.H200
    for _, launches in al.BY_GPU:  # the decode tiles inside mixed steps take DECODE_CONFIG's
        assert launches.decode.tile_n == launches.fp8_decode.tile_n == al.DECODE_CONFIG.tile_n


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernel")
def test_paged_attention_under_the_interpreter() -> None:
    run_interpreted(CHECK, "ATTENTION_OK", timeout=300)
