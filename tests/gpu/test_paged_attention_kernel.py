"""The Triton paged-attention kernel against a float32 torch reference, every element."""

from __future__ import annotations

import random

import pytest
import torch

from pagedllm.attention.triton_backend import split_scratch
from pagedllm.kernels.paged_attention import LaunchConfig, paged_attention


def reference(q, kv, table, seq_lens, qsl, scale, window=None):
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    kv_heads, dim, block_size = kv.shape[3], kv.shape[4], kv.shape[2]
    group = q.shape[1] // kv_heads
    for i, total in enumerate(seq_lens):
        start, end = qsl[i], qsl[i + 1]
        blocks = table[i, : -(-total // block_size)].long()
        k = kv[0][blocks].reshape(-1, kv_heads, dim)[:total].double().repeat_interleave(group, 1)
        v = kv[1][blocks].reshape(-1, kv_heads, dim)[:total].double().repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q[start:end].double(), k) * scale
        n = end - start
        keys = torch.arange(total, device=q.device)[None, :]
        positions = torch.arange(total - n, total, device=q.device)[:, None]
        hidden = keys > positions
        if window is not None:  # as transformers: keys in (position - window, position]
            hidden |= keys <= positions - window
        scores = scores.masked_fill(hidden, float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


def run_case(
    seed, heads, kv_heads, dim, block_size, dtype, query_lens, prefixes, segments=1,
    window=None, device="cuda", config=None, order=None, counters=True, calls=1,
    cache_dtype=None,
):  # fmt: skip
    """The relative error of ``paged_attention`` against ``reference`` (the worst of
    ``calls`` calls over one split-KV scratch, the output poisoned before each). A split
    passes the merge counters unless ``counters`` is False; they must be zero after every
    call. ``cache_dtype`` (FP8): the cache holds it, scaled by K's and V's scales."""
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    seq_lens = [q + p for q, p in zip(query_lens, prefixes)]
    need = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(need) + 5
    kv = torch.randn(2, num_blocks, block_size, kv_heads, dim, generator=gen, device=device).to(
        dtype
    )
    kv_scale, values = None, kv
    if cache_dtype is not None:
        kv = (kv.float() * 0.5).to(cache_dtype)
        kv_scale = torch.tensor([0.7, 1.3], device=device)
        values = kv.float() * kv_scale.view(2, 1, 1, 1, 1)
    pool = list(range(num_blocks))
    rng.shuffle(pool)
    table = torch.zeros(len(seq_lens), max(need) + 3, dtype=torch.int32, device=device)
    k = 0
    for i, n in enumerate(need):
        table[i, :n] = torch.tensor(pool[k : k + n], dtype=torch.int32)
        k += n
    tokens = sum(query_lens)
    q = torch.randn(tokens, heads, dim, generator=gen, device=device).to(dtype)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    out = torch.empty_like(q)
    scale = dim**-0.5
    partials = None
    if segments > 1:  # the backend's scratch, with the merge counters unless told not to
        partials = split_scratch(q, segments, kv_heads if counters else None)
    expected = reference(q, values, table, seq_lens, qsl, scale, window)
    worst = 0.0
    for _ in range(calls):
        out.fill_(float("nan"))  # poisoned: every element must be written
        paged_attention(
            q, kv, out, table, torch.tensor(seq_lens, dtype=torch.int32, device=device),
            torch.tensor(qsl, dtype=torch.int32, device=device), len(seq_lens),
            max(query_lens), scale, segments, partials, config, kv_scale=kv_scale,
            window=window,
            order=None if order is None else torch.tensor(order, dtype=torch.int32,
                                                          device=device),
        )  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()
        assert not torch.isnan(out).any(), "an output element was not written"
        if partials is not None and counters:
            assert not partials[3].any(), "a merge counter was left nonzero"
        worst = max(worst, ((out.double() - expected).norm() / expected.norm()).item())
    return worst


TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# Every pair of (dtype, head dim, block size, query heads per KV head) occurs in some case:
# each case compiles its own kernel variants (~10 s on an H200), and the full product's 48
# took longer than a device call. The last two are llama-3.1-8b's and qwen3-0.6b's shapes.
MIXED_CASES = [
    (F32, 64, 16, 8, 8), (F32, 128, 32, 16, 2), (F32, 64, 32, 12, 4), (F32, 128, 16, 14, 2),
    (F16, 128, 32, 8, 8), (F16, 64, 16, 16, 2), (F16, 128, 16, 12, 4), (F16, 64, 32, 14, 2),
    (BF16, 64, 16, 8, 8), (BF16, 128, 32, 16, 2), (BF16, 64, 32, 12, 4), (BF16, 128, 16, 14, 2),
    (BF16, 128, 16, 32, 8), (BF16, 128, 16, 16, 8),
]  # fmt: skip


@pytest.mark.parametrize("dtype, dim, block_size, heads, kv_heads", MIXED_CASES)
def test_mixed_ragged_batch(dtype, dim, block_size, heads, kv_heads):
    rng = random.Random(dim * block_size + heads)
    query_lens = [1, 1, rng.randint(2, 70), 1, rng.randint(100, 300), 1, 17]
    prefixes = [rng.randint(0, 500) for _ in query_lens]
    prefixes[4] = 0  # a fresh prompt
    error = run_case(7, heads, kv_heads, dim, block_size, dtype, query_lens, prefixes)
    assert error < TOLERANCE[dtype]


@pytest.mark.parametrize("rows", [64, 128])
@pytest.mark.parametrize("tile_n, warps", [(32, 4), (64, 8), (128, 8)])
def test_prefill_tiles(rows, tile_n, warps):
    """Every launch shape the tuning sweeps computes the same attention."""
    query_lens = [1, 300, 1, 129, 64, 1]
    prefixes = [40, 0, 700, 33, 0, 5]
    config = LaunchConfig(tile_n=tile_n, num_warps=warps, num_stages=2, rows=rows)
    error = run_case(3, 32, 8, 128, 16, torch.bfloat16, query_lens, prefixes, config=config)
    assert error < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("segments", [2, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_decode(segments, dtype):
    query_lens = [1] * 5
    prefixes = [0, 5, 333, 1999, 4096]
    error = run_case(3, 32, 8, 128, 16, dtype, query_lens, prefixes, segments)
    assert error < TOLERANCE[dtype]


@pytest.mark.parametrize("segments", [2, 4, 16])
@pytest.mark.parametrize("heads", [8, 16, 32])  # over 8 KV heads: G = 1, 2, 4
@pytest.mark.parametrize("ordered", [False, True])
def test_split_decode_merges_in_its_last_program(segments, heads, ordered):
    """With the counters, a split decode batch merges in the last program of each request
    and KV head (no second kernel): three calls over one scratch, each matching the
    reference and leaving every counter zero (else the next call would merge nowhere)."""
    prefixes = [0, 5, 333, 1999, 4096, 70]
    order = sorted(range(6), key=lambda i: -prefixes[i]) if ordered else None
    error = run_case(4, heads, 8, 128, 16, torch.bfloat16, [1] * 6, prefixes, segments,
                     order=order, calls=3)  # fmt: skip
    assert error < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("segments", [2, 16])
def test_split_decode_without_counters_merges_in_a_second_kernel(segments):
    error = run_case(4, 32, 8, 128, 16, torch.bfloat16, [1] * 5, [0, 5, 333, 1999, 4096],
                     segments, counters=False)  # fmt: skip
    assert error < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("segments", [4, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_decode_over_an_fp8_cache(segments, dtype):
    """V's scale is on each segment's acc once (the merge in the last program adds none)."""
    error = run_case(6, 32, 8, 128, 16, dtype, [1] * 4, [7, 300, 1999, 4096], segments,
                     calls=2, cache_dtype=torch.float8_e4m3fn)  # fmt: skip
    assert error < 2e-2


def test_split_decode_replays_in_a_cuda_graph():
    """A captured split decode (the decode graphs' case) replays over new queries and
    lengths: each replay matches the reference, and the counters, captured as persistent
    scratch, are zero after each one."""
    gen = torch.Generator(device="cuda").manual_seed(9)
    heads, kv_heads, dim, block, segments = 32, 8, 128, 16, 16
    lens = [40, 700, 3000]
    blocks = -(-(max(lens) + 8) // block)
    kv = torch.randn(2, blocks * len(lens), block, kv_heads, dim, generator=gen, device="cuda")
    kv = kv.to(torch.bfloat16)
    table = torch.randperm(blocks * len(lens), device="cuda").to(torch.int32).view(len(lens), -1)
    q = torch.empty(len(lens), heads, dim, device="cuda", dtype=torch.bfloat16)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    qsl = torch.arange(len(lens) + 1, dtype=torch.int32, device="cuda")
    order = torch.tensor([2, 1, 0], dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    partials = split_scratch(q, segments, kv_heads)

    def step() -> None:
        paged_attention(q, kv, out, table, seq_lens, qsl, len(lens), 1, dim**-0.5, segments,
                        partials, order=order)  # fmt: skip

    q.normal_(generator=gen)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and warm up outside the capture
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for i in range(4):
        now = [n + i for n in lens]
        seq_lens.copy_(torch.tensor(now, dtype=torch.int32))
        q.copy_(torch.randn(q.shape, generator=gen, device="cuda"))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert not torch.isnan(out).any(), i
        assert not partials[3].any(), i
        expected = reference(q, kv, table, now, [0, 1, 2, 3], dim**-0.5)
        assert ((out.double() - expected).norm() / expected.norm()).item() < 2e-2, i


@pytest.mark.parametrize("segments", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_prefill(segments, dtype):
    """Prefill chunks over long cached histories beside decodes and a fresh prompt, each
    program's keys split (``prefill_segments``' eager steps), at the prefill launch."""
    query_lens = [1, 616, 1, 40, 90]
    prefixes = [300, 6144, 4000, 3072, 0]
    error = run_case(3, 32, 8, 128, 16, dtype, query_lens, prefixes, segments)
    assert error < TOLERANCE[dtype]


@pytest.mark.parametrize("window", [1, 7, 64, 300])
@pytest.mark.parametrize("segments", [1, 4])
def test_sliding_window(window, segments):
    """Prefill chunks and decodes of contexts shorter and much longer than the window; with
    split-KV decodes, segments that fall wholly before the window read nothing."""
    query_lens = [1, 1, 40, 1, 150] if segments == 1 else [1] * 5
    prefixes = [0, 20, 500, 1999, 0]
    error = run_case(5, 16, 4, 64, 16, torch.float32, query_lens, prefixes, segments, window)
    assert error < TOLERANCE[torch.float32]


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("segments", [1, 2])
def test_decode_only_many_requests(ordered, segments):
    """With ``order`` (longest first, as the runner builds it) program i serves request
    order[i]: every request's output still lands in its own rows."""
    rng = random.Random(1)
    query_lens = [1] * 200
    prefixes = [rng.randint(0, 2000) for _ in query_lens]
    order = sorted(range(200), key=lambda i: -prefixes[i]) if ordered else None
    error = run_case(2, 16, 8, 128, 16, torch.bfloat16, query_lens, prefixes, segments,
                     order=order)  # fmt: skip
    assert error < 2e-2


def compiled_variants(kernel) -> int:
    """How many binaries Triton holds for a jit function (its cache per device)."""
    return sum(len(cache[0]) for cache in kernel.device_caches.values())


def test_batch_sizes_compile_no_new_variant():
    """A step's request count, segment count and block-table width change from step to step:
    none of them may make Triton compile another binary of the kernel (a compile in the
    middle of serving stalls every stream for seconds)."""
    from pagedllm.kernels.paged_attention import paged_attention_kernel

    def variants_after(num_reqs: int) -> int:
        query_lens = [1] * (num_reqs - 1) + [40]
        prefixes = [16 * num_reqs + 7] * num_reqs  # and a block-table width of its own
        run_case(num_reqs, 32, 8, 128, 16, torch.bfloat16, query_lens, prefixes)
        return compiled_variants(paged_attention_kernel)

    first = variants_after(17)
    assert [variants_after(n) for n in (1, 16, 32, 33)] == [first] * 4
