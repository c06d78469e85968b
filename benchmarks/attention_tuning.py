"""Time the paged-attention kernel's launch configurations on realistic decode and prefill
batches (GPU); prints achieved KV bandwidth per configuration.

    python benchmarks/attention_tuning.py [--mixed [--default-only] | --layout | --single |
        --w1-segments | --w1-order | --w1-launches | --fp8-decode | --tail | --history]
"""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from pagedllm.attention.triton_backend import split_scratch
from pagedllm.kernels.attention_launch import (
    DECODE_CONFIG,
    FP8_DECODE_CONFIG,
    PREFILL_CONFIG,
    LaunchConfig,
)
from pagedllm.kernels.paged_attention import paged_attention


def block_table(need: list[int], pool: torch.Tensor) -> torch.Tensor:
    """Request i's ``need[i]`` blocks, taken in turn from ``pool`` (block ids)."""
    table = torch.zeros(len(need), max(need), dtype=torch.int32, device="cuda")
    k = 0
    for i, n in enumerate(need):
        table[i, :n] = pool[k : k + n].to(torch.int32)
        k += n
    return table


def batch(num_reqs, ctx, query_len, heads, kv_heads, dim=128, block_size=16, seed=0, spread=0.8):
    """Requests of ctx * U[1 - spread, 1 + spread] tokens (spread 0: all of ctx, as W2's)."""
    rng = random.Random(seed)
    lens = [max(query_len, int(ctx * rng.uniform(1 - spread, 1 + spread))) for _ in range(num_reqs)]
    need = [-(-n // block_size) for n in lens]
    blocks = sum(need) + 1
    kv = torch.randn(2, blocks, block_size, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    table = block_table(need, torch.randperm(blocks, device="cuda"))
    q = torch.randn(num_reqs * query_len, heads, dim, device="cuda", dtype=torch.bfloat16)
    qsl = torch.arange(0, num_reqs * query_len + 1, query_len, dtype=torch.int32, device="cuda")
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    kv_bytes = sum(lens) * kv_heads * dim * 2 * 2
    return q, kv, table, seq, qsl, kv_bytes


def w1_batch(cache_blocks: int = 0, scatter: bool = False, hnd: bool = False, seed: int = 0,
             order: str = "given"):  # fmt: skip
    """A W1 decode step (qwen3-0.6b: 16 query heads, 8 KV heads of 128; 256 requests with
    U[100, 1024] prompts and ~120 generated tokens) over a cache of ``cache_blocks`` blocks
    (W1's real cache: ~56k a layer), its blocks taken in ascending order (as the block pool
    hands them out) or scattered over the whole cache; ``hnd``: each block stored head-major
    ([block, head, token, dim]), seen through strides in the kernel's [block, token, head,
    dim] order. ``order``: the requests as drawn ("given"), or longest first ("longest")
    or last ("shortest"): program i serves request i, so this is the programs' start order."""
    rng = random.Random(seed)
    lens = [rng.randint(100, 1024) + 120 for _ in range(256)]
    if order != "given":
        lens.sort(reverse=order == "longest")
    need = [-(-n // 16) for n in lens]
    blocks = max(cache_blocks, sum(need) + 1)
    shape = (2, blocks, 8, 16, 128) if hnd else (2, blocks, 16, 8, 128)
    kv = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    if hnd:
        kv = kv.permute(0, 1, 3, 2, 4)
    pool = torch.randperm(blocks, device="cuda") if scatter else torch.arange(blocks, device="cuda")
    table = block_table(need, pool)
    q = torch.randn(256, 16, 128, device="cuda", dtype=torch.bfloat16)
    qsl = torch.arange(0, 257, dtype=torch.int32, device="cuda")
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    return q, kv, table, seq, qsl, sum(lens) * 8 * 128 * 2 * 2


def mixed_batch(prefills=16, prompt=512, decodes=256, ctx=640, heads=32, kv_heads=8, dim=128,
                block_size=16, seed=0):  # fmt: skip
    """A saturated server's step: ``decodes`` one-token requests with ~ctx cached tokens,
    then ``prefills`` fresh prompts of ``prompt`` tokens (issue 13's workload at 8,192 tokens).
    The last value is the step's attention FLOPs (causal prefill plus decodes)."""
    rng = random.Random(seed)
    lens = [int(ctx * rng.uniform(0.8, 1.2)) for _ in range(decodes)] + [prompt] * prefills
    qlens = [1] * decodes + [prompt] * prefills
    need = [-(-n // block_size) for n in lens]
    blocks = sum(need) + 1
    kv = torch.randn(2, blocks, block_size, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    table = block_table(need, torch.randperm(blocks, device="cuda"))
    q = torch.randn(sum(qlens), heads, dim, device="cuda", dtype=torch.bfloat16)
    starts = [0]
    for n in qlens:
        starts.append(starts[-1] + n)
    qsl = torch.tensor(starts, dtype=torch.int32, device="cuda")
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    pairs = sum(lens[:decodes]) + prefills * prompt * (prompt + 1) // 2
    return q, kv, table, seq, qsl, 4 * pairs * heads * dim


def time_config(args, config, query_len, segments=1, graph=False):
    """The launch's median time (ms) and rate. ``graph``: replayed from a CUDA graph, as
    the engine runs decodes; a small batch's launch otherwise costs the host more than
    the kernels take (a 16-request decode: ~70 us of launch against ~40-60 of kernels)."""
    from triton.testing import do_bench, do_bench_cudagraph

    q, kv, table, seq, qsl, kv_bytes = args
    out = torch.empty_like(q)
    # An FP8 cache (--fp8-decode): unit scales, as the engine's default
    kv_scale = torch.ones(2, device="cuda") if kv.dtype == torch.float8_e4m3fn else None
    # the engine's scratch: a decode batch's segments merged by their last program
    parts = split_scratch(q, segments, kv.shape[3]) if segments > 1 else None

    def fn():
        return paged_attention(
            q,
            kv,
            out,
            table,
            seq,
            qsl,
            seq.numel(),
            query_len,
            0.088,
            segments,
            parts,
            config,
            kv_scale=kv_scale,
        )

    if graph:
        fn()  # compiled outside the capture
        ms = do_bench_cudagraph(fn, rep=50, return_mode="median")
    else:
        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
    return ms, kv_bytes / ms / 1e9


def main() -> None:
    configs = [
        LaunchConfig(t, w, s)
        for t, w, s in itertools.product((16, 32, 64, 128), (2, 4, 8), (1, 2, 3))
    ]
    cases = {
        "decode 256 x 1000, G=2 (qwen3-0.6b)": (batch(256, 1000, 1, 16, 8), 1, 1),
        "decode 256 x 640, G=4 (llama-8b)": (batch(256, 640, 1, 32, 8), 1, 1),
        "decode 1 x 384, G=4, 16 segments": (batch(1, 384, 1, 32, 8), 1, 16),
        "prefill 4 x 2048": (batch(4, 2048, 2048, 32, 8), 2048, 1),
    }
    if "--mixed" in sys.argv:  # issue 13: prefill tiles of 64 or 128 rows; FLOP rate
        configs = [
            LaunchConfig(t, w, s, rows)
            for t, w, s, rows in itertools.product((32, 64), (4, 8), (2, 3), (64, 128))
        ]
        if "--default-only" in sys.argv:  # a before/after comparison: the launch in use
            configs = [PREFILL_CONFIG]
        cases = {
            "mixed 16 x 512 fresh + 256 decodes x 640, G=4 (TFLOP/s)": (mixed_batch(), 512, 1),
            "its 16 x 512 fresh prompts alone (TFLOP/s)": (mixed_batch(decodes=0), 512, 1),
            "prefill 4 x 2048 fresh, G=4 (TFLOP/s)": (mixed_batch(4, 2048, 0), 2048, 1),
        }
        decode_part = mixed_batch(prefills=0)
        ms, _ = time_config(decode_part, DECODE_CONFIG, 1)
        print(f"its 256 decodes alone, decode launch: {ms * 1e3:.1f} us")
        rope()
    if "--history" in sys.argv:  # issue 20: one later turn's chunk over a long history
        history()
        return
    if "--tail" in sys.argv:  # W1's last steps: few requests of long histories, by segments
        tail()
        return
    if "--single" in sys.argv:  # one request's decode: µs a layer by segments
        single_stream()
        return
    if "--w1-segments" in sys.argv:  # W1's decode step by split-KV segments and launch:
        # whether evening out its programs' lengths (U[100, 1024] prompts) pays for the merge
        configs = [
            DECODE_CONFIG, LaunchConfig(32, 4, 3), LaunchConfig(64, 8, 3),
            LaunchConfig(128, 8, 2), LaunchConfig(32, 2, 4),
        ]  # fmt: skip
        w1 = w1_batch(56_000)
        cases = {f"W1 decode, 56k-block cache, {s} segment(s)": (w1, 1, s) for s in (1, 2, 4)}
    if "--w1-order" in sys.argv:  # W1's decode step by the programs' start order: whether
        # starting the longest sequences first shortens the step's tail (its last programs)
        configs = [DECODE_CONFIG]
        orders = {"given": "as drawn", "longest": "longest first", "shortest": "shortest first"}
        cases = {
            f"W1 decode, 56k-block cache, requests {label}": (w1_batch(56_000, order=order), 1, 1)
            for order, label in orders.items()
        }
    if "--w1-launches" in sys.argv:  # W1's decode step by launch, register cap and start
        # order (the H200 read W1's cache at 78% of its copy rate, W2's near 97%), and W2's
        configs = [
            DECODE_CONFIG, LaunchConfig(64, 4, 2), LaunchConfig(64, 4, 3, max_registers=128),
            LaunchConfig(64, 4, 4), LaunchConfig(64, 4, 2, max_registers=96),
            LaunchConfig(32, 4, 4), LaunchConfig(32, 4, 3), LaunchConfig(128, 4, 2),
            LaunchConfig(128, 4, 2, max_registers=128), LaunchConfig(128, 8, 3),
            LaunchConfig(64, 8, 2), LaunchConfig(32, 2, 4),
        ]  # fmt: skip
        cases = {
            f"W1 decode, 56k-block cache, requests {label}": (w1_batch(56_000, order=order), 1, 1)
            for order, label in (("given", "as drawn"), ("longest", "longest first"))
        }
        # W2's decode (G = 4, equal lengths): a GPU's table has one bfloat16 decode launch
        # for both, so a launch that wins W1's must not lose W2's.
        cases["W2 decode 1000 x 640, G=4"] = (batch(1000, 640, 1, 32, 8, spread=0.0), 1, 1)
    if "--fp8-decode" in sys.argv:  # issue 14: W2's decode attention over an FP8 cache,
        # which reads half the bytes but was no faster than bfloat16 at the bfloat16 launch:
        # launches with and without a cap on registers (more programs a multiprocessor)
        configs = [
            DECODE_CONFIG, FP8_DECODE_CONFIG, LaunchConfig(128, 4, 2),
            LaunchConfig(128, 4, 2, max_registers=128), LaunchConfig(64, 4, 2),
            LaunchConfig(64, 4, 3, max_registers=128), LaunchConfig(64, 4, 2, max_registers=96),
            LaunchConfig(32, 4, 2, max_registers=96),
        ]  # fmt: skip
        cases = {}
        for spread, label in ((0.8, "lengths 0.2-1.8x"), (0.0, "all 640, as W2's")):
            w2 = batch(1000, 640, 1, 32, 8, spread=spread)
            q, kv, table, seq, qsl, kv_bytes = w2
            fp8 = (q, kv.to(torch.float8_e4m3fn), table, seq, qsl, kv_bytes // 2)
            ms, rate = time_config(w2, DECODE_CONFIG, 1)
            print(f"W2 decode 1000 x 640 ({label}), G=4, bfloat16 cache, {DECODE_CONFIG}: "
                  f"{ms * 1e3:.1f} us, {rate:.2f} TB/s")  # fmt: skip
            name = f"W2 decode 1000 x 640 ({label}), G=4, FP8 cache (TB/s of its bytes)"
            cases[name] = (fp8, 1, 1)
    if "--layout" in sys.argv:  # W1's decode step: cache size, block order, block layout
        configs = [DECODE_CONFIG]
        cases = {
            "W1 decode, compact cache": (w1_batch(), 1, 1),
            "W1 decode, 56k-block cache, ascending blocks": (w1_batch(56_000), 1, 1),
            "W1 decode, 56k-block cache, scattered blocks": (w1_batch(56_000, True), 1, 1),
            "W1 decode, 56k-block cache, ascending, head-major blocks": (
                w1_batch(56_000, hnd=True), 1, 1),
        }  # fmt: skip
    for name, (args, query_len, segments) in cases.items():
        rows = []
        for config in configs:
            try:
                ms, gbs = time_config(args, config, query_len, segments)
            except Exception as exc:  # a config the compiler rejects (shared memory)
                rows.append((float("inf"), 0.0, config, type(exc).__name__))
                continue
            rows.append((ms, gbs, config, ""))
        rows.sort(key=lambda r: r[0])
        print(f"\n{name}")
        for ms, gbs, config, err in rows[:12]:
            # bytes (or FLOPs) / ms / 1e9 is TB/s (or TFLOP/s)
            rate = f"{gbs:7.0f} TFLOP/s" if "TFLOP" in name else f"{gbs:7.2f} TB/s"
            print(f"  {ms * 1e3:8.1f} us  {rate}  {config} {err}")
        if "--mixed" in sys.argv:  # the current default, and the winner as the variable
            for ms, gbs, config, _ in rows:
                if config == PREFILL_CONFIG:
                    print(f"  default: {ms * 1e3:8.1f} us  {gbs:7.0f} TFLOP/s  {config}")
            best = rows[0][2]
            spec = f"{best.tile_n},{best.num_warps},{best.num_stages},{best.rows}"
            print(f"BEST PAGEDLLM_ATTENTION_PREFILL_CONFIG={spec}")


def history_batch(hist: int, new: int = 616, heads: int = 32, kv_heads: int = 8, dim: int = 128,
                  block_size: int = 16):  # fmt: skip
    """One request's chunk of ``new`` tokens after ``hist`` cached ones (a multi-turn chat's
    later turn, llama-8b's heads). The last value is its attention FLOPs (causal)."""
    total = hist + new
    need = -(-total // block_size)
    kv = torch.randn(2, need + 1, block_size, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    table = block_table([need], torch.randperm(need + 1, device="cuda"))
    q = torch.randn(new, heads, dim, device="cuda", dtype=torch.bfloat16)
    qsl = torch.tensor([0, new], dtype=torch.int32, device="cuda")
    seq = torch.tensor([total], dtype=torch.int32, device="cuda")
    pairs = new * hist + new * (new + 1) // 2
    return q, kv, table, seq, qsl, 4 * pairs * heads * dim


def history() -> None:
    """A later turn's prefill chunk (616 new tokens) over 1,536-6,144 cached ones: a grid
    of (616 / 32 + 1) x 8 programs, about one wave on 132 multiprocessors, each walking the
    whole history. The launches at 1 and 4 split-KV segments over a 3,072-token history,
    then the best three and the default by segments and history (TFLOP/s), each split's
    output checked against the unsplit one."""
    configs = [
        LaunchConfig(t, w, s, rows)
        for t, w, s, rows in itertools.product((32, 64, 128), (4, 8), (2, 3), (64, 128))
    ]
    args = history_batch(3072)
    rows = []
    for config in configs:
        for segments in (1, 4):
            try:
                ms, rate = time_config(args, config, 616, segments)
            except Exception as exc:  # a config the compiler rejects (shared memory)
                print(f"  {config} x{segments}: {type(exc).__name__}")
                continue
            rows.append((ms, rate, config, segments))
    rows.sort(key=lambda r: r[0])
    print("616 new after 3,072 cached, G=4: the best launches (TFLOP/s)")
    for ms, rate, config, segments in rows[:12]:
        print(f"  {ms * 1e3:8.1f} us  {rate:5.0f} TFLOP/s  {segments} seg  {config}")
    best = [PREFILL_CONFIG]
    for _, _, config, _ in rows:
        if config not in best and len(best) < 4:
            best.append(config)
    for hist in (1536, 3072, 6144):
        args = history_batch(hist)
        for config in best:
            line = []
            for segments in (1, 2, 4, 8):
                ms, rate = time_config(args, config, 616, segments)
                line.append(f"{segments} seg {ms * 1e3:6.1f} us {rate:4.0f}")
            print(f"history {hist:5d} {config}: " + ", ".join(line), flush=True)
        _check_split(args, best[0])


def _check_split(args, config) -> None:
    """The split outputs against the unsplit one (max |difference|)."""
    q, kv, table, seq, qsl, _ = args
    ref = paged_attention(q, kv, torch.empty_like(q), table, seq, qsl, 1, q.shape[0], 0.088,
                          config=config)  # fmt: skip
    for segments in (2, 4, 8):
        parts = split_scratch(q, segments, kv.shape[3])
        out = paged_attention(q, kv, torch.empty_like(q), table, seq, qsl, 1, q.shape[0], 0.088,
                              segments, parts, config)  # fmt: skip
        print(f"  {segments} segments: max |split - unsplit| {(out - ref).abs().max().item():.2e}")


def tail() -> None:
    """Decode batches like W1's last few hundred steps (qwen3-0.6b, G = 2: 8 KV heads; the
    requests left have ~1,300 tokens, 0.6-1.4x): µs a layer and TB/s by split-KV segments,
    replayed from CUDA graphs as the engine's decodes are, and the count the Triton
    backend picks for this GPU."""
    from pagedllm.attention.triton_backend import TritonAttentionBackend

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    picks = TritonAttentionBackend(sms)
    for n in (8, 16, 24, 32, 48, 64, 96, 128):
        args = batch(n, 1300, 1, 16, 8, spread=0.4)
        line = []
        for s in (1, 2, 4, 8):
            ms, rate = time_config(args, DECODE_CONFIG, 1, s, graph=True)
            line.append(f"{s} seg {ms * 1e3:6.1f} us {rate:4.2f} TB/s")
        chosen = picks.segments_for(n, 1, 8)
        print(f"{n:4d} requests (picks {chosen:2d}): " + ", ".join(line), flush=True)


def single_stream() -> None:
    """One request's decode (W3: llama-3.1-8b, 32 query heads, 8 KV heads of 128) at
    several context lengths and split-KV segment counts: µs per layer, from a CUDA graph
    of 32 layers in a row (each its own cache, so a layer's K/V are not the one before's),
    launched as the engine launches them (dependent launches where the GPU has them)."""
    for ctx in (128, 256, 384, 1024, 4096):
        line = [f"{s} seg {_single_stream_us(ctx, s):5.2f} us" for s in (1, 2, 4, 8, 16)]
        print(f"single stream, context {ctx:5d}: " + ", ".join(line))


def _single_stream_us(ctx: int, segments: int, layers: int = 32) -> float:
    from triton.testing import do_bench_cudagraph

    need = -(-ctx // 16)
    q = torch.randn(1, 32, 128, device="cuda", dtype=torch.bfloat16)
    caches = [torch.randn(2, need + 1, 16, 8, 128, device="cuda", dtype=torch.bfloat16)
              for _ in range(layers)]  # fmt: skip
    table = torch.arange(need, dtype=torch.int32, device="cuda")[None, :]
    seq = torch.tensor([ctx], dtype=torch.int32, device="cuda")
    qsl = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    parts = split_scratch(q, segments, caches[0].shape[3]) if segments > 1 else None

    def run() -> None:
        for kv in caches:
            paged_attention(q, kv, out, table, seq, qsl, 1, 1, 0.088, segments, parts)

    run()
    return do_bench_cudagraph(run, rep=50) * 1e3 / layers


def rope() -> None:
    """rope_qk on an 8,448-token step of llama-8b (32 q + 8 k + 8 v heads of 128)."""
    from triton.testing import do_bench

    from pagedllm.kernels.fused_ops import rope_qk

    qkv = torch.randn(8448, 48, 128, device="cuda", dtype=torch.bfloat16)
    cache = torch.randn(4096, 128, device="cuda")
    pos = torch.randint(0, 4096, (8448,), device="cuda")
    ms = do_bench(lambda: rope_qk(qkv, 32, 8, cache, pos), warmup=25, rep=100)
    moved = 2 * 8448 * 40 * 128 * 2
    print(f"rope_qk 8448 tokens: {ms * 1e3:.1f} us, {moved / ms / 1e9:.2f} TB/s")


if __name__ == "__main__":
    main()
