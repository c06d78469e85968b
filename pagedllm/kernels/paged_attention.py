"""Triton paged attention over one flat ragged batch (prefill chunks and decodes mixed).

Layout (see ``pagedllm.attention``): q [tokens, heads, dim]; the cache of one layer is
``[2, num_blocks, block_size, kv_heads, dim]``, in q's dtype or FP8 (widened on load, its
per-layer K and V scales applied to the scores and to the output); request i's queries are tokens
``[query_start_loc[i], query_start_loc[i+1])`` at positions ``seq_len - query_len + j``;
query j attends to keys ``0 .. seq_len - query_len + j`` (its cached prefix and the chunk,
causally), or with a sliding window W only to the last W of them (the KV tiles before a
tile's window are not read at all).

One program computes a tile of BLOCK_Q consecutive queries of one request for one KV head,
all G query heads sharing that KV head at once (rows = query x head, so a decode still
fills a tensor-core tile); it walks the request's KV tiles with an online softmax (base 2).
The tiles every row of the program sees whole run a loop without masks; only the tiles at
the causal diagonal, the window's start and the context's end are masked. In a batch with
prefill chunks, requests with one query (decodes) take a tile of their own shape (one
query's heads, the decode launch's keys per step), not a prefill tile with one row in use.
With ``num_segments > 1`` (flash-decoding) the KV range of each tile is split across programs
and the partial results are merged: small batches with long contexts then keep every
multiprocessor busy. In a decode batch the last program of a (request, KV head) to finish
merges its request's G heads (a counter a pair tells which is last), so a layer's
attention is one launch; a batch with prefill chunks merges in a second kernel, where one
program's merge would be large.

Programs find their request by binary search over ``query_start_loc``: request i owns the
tile indices ``[qsl[i] // BLOCK_Q + i, qsl[i + 1] // BLOCK_Q + i + 1)`` (a bound that never
undercounts), so the grid, ``tokens // BLOCK_Q + num_reqs``, is known without reading the
device: the launch needs no host sync and fits in a CUDA graph. A decode batch (every
request one query) skips the search: program i is request i, and the grid ``num_reqs``.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from pagedllm.kernels import dependent_launch
from pagedllm.kernels.attention_launch import (
    DECODE_CONFIG,
    AttentionLaunches,
    LaunchConfig,
    launch_config,
    launches_for,
    register_cap,
)
from pagedllm.kernels.dependent_launch import await_inputs

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_SEGMENTS = 16  # split-KV segments merge_segments_kernel can combine
# A step with prefill splits each program's keys in PREFILL_SEGMENTS when its grid holds
# under PREFILL_WAVES programs a multiprocessor and every segment keeps at least
# MIN_PREFILL_SEGMENT_KEYS keys. On an H100, 616 new tokens at llama-8b's heads (160
# programs): after 6,144 cached tokens 4 segments took 326 us against 370 unsplit; after
# 3,072, 212 against 205, and 2 segments 237; after 1,536 every split was 20-30% slower
# (benchmarks/RESULTS.md, "A later turn's prefill attention", 2026-12-07).
PREFILL_SEGMENTS = 4
MIN_PREFILL_SEGMENT_KEYS = 1536
PREFILL_WAVES = 2
NO_WINDOW = 1 << 30  # a window longer than any context: plain causal attention
FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
LOG2E = 1.4426950408889634  # scores are kept in log2 units: exp(x) = exp2(x * log2(e))


@triton.jit
def _find_request(qsl_ptr, tile, num_reqs, BLOCK_Q: tl.constexpr):
    """The request owning ``tile``: the last i with qsl[i] // BLOCK_Q + i <= tile."""
    lo = 0
    hi = num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(qsl_ptr + mid) // BLOCK_Q + mid
        if start <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attend_tile(
    q, m_i, l_i, acc, t, kv_end, limit, lower, row_ok, bt_row, k_ptr, v_ptr,
    kv_head, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
    PRECISION: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over keys [t * TILE_N, (t + 1) * TILE_N), scores in log2
    units (``qk_scale`` holds log2(e)). MASKED=False is for tiles every row sees whole
    (below the first row's causal limit, inside the last row's window, before kv_end): they
    skip the masks and the -inf guards."""
    dims = tl.arange(0, HEAD_DIM)
    pos = t * TILE_N + tl.arange(0, TILE_N)
    key_ok = pos < kv_end
    # int64: block * stride can pass 2**31 elements in a large cache
    if MASKED:
        block = tl.load(bt_row + pos // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
    else:
        block = tl.load(bt_row + pos // BLOCK_SIZE).to(tl.int64)
    offset = pos % BLOCK_SIZE
    k_rows = k_ptr + block * stride_kb + offset * stride_ks + kv_head * stride_kh
    v_rows = v_ptr + block * stride_vb + offset * stride_vs + kv_head * stride_vh
    # An FP8 cache is widened to q's dtype here; its K scale is folded into ``qk_scale``.
    if MASKED:
        k = tl.load(k_rows[:, None] + dims[None, :], mask=key_ok[:, None], other=0.0)
    else:
        k = tl.load(k_rows[:, None] + dims[None, :])
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * qk_scale
    if MASKED:
        visible = (pos[None, :] <= limit[:, None]) & (pos[None, :] >= lower[:, None])
        visible = visible & key_ok[None, :] & row_ok[:, None]
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # Masked rows with nothing visible yet keep m = -inf: shift by 0 there (no inf - inf).
    # Unmasked, every score is finite and so is m_new.
    shift = tl.where(m_new == float("-inf"), 0.0, m_new) if MASKED else m_new
    p = tl.exp2(s - shift[:, None])
    alpha = tl.exp2(m_i - shift)  # 0 while m_i is -inf
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if MASKED:
        v = tl.load(v_rows[:, None] + dims[None, :], mask=key_ok[:, None], other=0.0)
    else:
        v = tl.load(v_rows[:, None] + dims[None, :])
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _attend_range(
    q, m_i, l_i, acc, lo, hi, kv_end, limit, lower, row_ok, bt_row, k_ptr, v_ptr,
    kv_head, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
    PRECISION: tl.constexpr, MASKED: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """KV tiles lo .. hi - 1, in order."""
    if INTERPRETED:  # Triton's CPU interpreter cannot loop over a range with tensor bounds
        t = lo
        while t < hi:
            m_i, l_i, acc = _attend_tile(
                q, m_i, l_i, acc, t, kv_end, limit, lower, row_ok, bt_row, k_ptr, v_ptr,
                kv_head, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                qk_scale, HEAD_DIM, BLOCK_SIZE, TILE_N, PRECISION, MASKED,
            )  # fmt: skip
            t += 1
    else:
        for t in range(lo, hi):
            m_i, l_i, acc = _attend_tile(
                q, m_i, l_i, acc, t, kv_end, limit, lower, row_ok, bt_row, k_ptr, v_ptr,
                kv_head, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                qk_scale, HEAD_DIM, BLOCK_SIZE, TILE_N, PRECISION, MASKED,
            )  # fmt: skip
    return m_i, l_i, acc


@triton.jit
def _is_last_segment(count_ptr, num_segments):
    """Count this program's segment done for its (request, KV head); True in the program
    that counts the last one. acq_rel orders the memory: the barrier puts every thread's
    partial stores before the (one-thread) atomic, whose release publishes them; in the
    last program its acquire comes before the partial loads of ``_merge_last``, which
    then see every segment's stores (the result reaches all threads through shared
    memory, after a barrier)."""
    tl.debug_barrier()
    return tl.atomic_add(count_ptr, 1, sem="acq_rel") == num_segments - 1


@triton.jit
def _merge_last(
    out_ptr, part_ptr, m_ptr, l_ptr, token, head, row_ok, num_segments, num_heads,
    stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MAX_SEGMENTS: tl.constexpr,
):  # fmt: skip
    """merge_segments_kernel's sums for this program's rows (token, head): out = sum_s
    2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s. The loads are ``.cg`` (L2, not L1): the other
    segments' partials were written by other multiprocessors, and a line of them left in
    this one's L1 (from an earlier call over the same scratch) would be stale."""
    tl.debug_barrier()  # after _is_last_segment's acquire in every thread (see there)
    segs = tl.arange(0, MAX_SEGMENTS)
    dims = tl.arange(0, HEAD_DIM)
    base = (token * num_heads + head) * num_segments
    ok = row_ok[:, None] & (segs[None, :] < num_segments)
    stat = base[:, None] + segs[None, :]
    m = tl.load(m_ptr + stat, mask=ok, other=float("-inf"), cache_modifier=".cg")
    l_seg = tl.load(l_ptr + stat, mask=ok, other=0.0, cache_modifier=".cg")
    m_max = tl.max(m, axis=1)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    total = tl.sum(tl.exp2(m - m_max[:, None]) * l_seg, axis=1)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for s in tl.static_range(MAX_SEGMENTS):  # masked past num_segments
        seg_ok = row_ok & (tl.full([BLOCK_M], s, tl.int32) < num_segments)
        m_s = tl.load(m_ptr + base + s, mask=seg_ok, other=float("-inf"), cache_modifier=".cg")
        w = tl.exp2(m_s - m_max)  # segments that saw no key have m = -inf: weight 0
        part = tl.load(
            part_ptr + (base + s)[:, None] * HEAD_DIM + dims[None, :],
            mask=seg_ok[:, None],
            other=0.0,
            cache_modifier=".cg",
        )
        acc += part * w[:, None]
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    o_rows = out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh
    tl.store(o_rows + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attend_queries(
    q_ptr, k_ptr, v_ptr, out_ptr, part_ptr, m_ptr, l_ptr, count_ptr, bt_row, kv_scale_ptr,
    q_begin, q_len, q_tile, seq_len, kv_head, segment, num_segments, num_kv_heads,
    qk_scale, window,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_ot, stride_oh,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, TILE_N: tl.constexpr,
    SPLIT: tl.constexpr, MERGE_LAST: tl.constexpr, MAX_SEGS: tl.constexpr,
    PRECISION: tl.constexpr, KV_QUANT: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Queries [q_tile * BLOCK_Q, (q_tile + 1) * BLOCK_Q) of one request (those < q_len)
    for the G query heads of one KV head: load, walk the KV tiles, store (with SPLIT the
    partials; with MERGE_LAST, one query a request, the last segment also merges them)."""
    prefix = seq_len - q_len
    rows = tl.arange(0, BLOCK_M)
    q_idx = q_tile * BLOCK_Q + rows // G  # query index within the request
    head = kv_head * G + rows % G
    row_ok = (rows < BLOCK_Q * G) & (q_idx < q_len)
    dims = tl.arange(0, HEAD_DIM)
    q_rows = q_ptr + (q_begin + q_idx)[:, None] * stride_qt + head[:, None] * stride_qh
    q = tl.load(q_rows + dims[None, :], mask=row_ok[:, None], other=0.0)

    # Keys this tile needs: from the window's start for its first query (0 without a
    # window) up to the causal limit of its last query.
    last_q = tl.minimum(q_len, (q_tile + 1) * BLOCK_Q) - 1
    kv_end = prefix + last_q + 1
    kv_begin = tl.maximum(prefix + q_tile * BLOCK_Q - window + 1, 0)
    num_tiles = tl.cdiv(kv_end, TILE_N)
    first_tile = kv_begin // TILE_N
    per_segment = tl.cdiv(num_tiles - first_tile, num_segments)
    first = first_tile + segment * per_segment
    stop = tl.minimum(first + per_segment, num_tiles)
    # Tiles [whole_lo, whole_hi) are seen whole by every row: each key is at or before the
    # first query's position and inside the last query's window.
    whole_hi = (prefix + q_tile * BLOCK_Q + 1) // TILE_N
    whole_lo = tl.cdiv(tl.maximum(prefix + last_q - window + 1, 0), TILE_N)
    a = tl.maximum(first, tl.minimum(whole_lo, stop))
    b = tl.maximum(a, tl.minimum(whole_hi, stop))

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    limit = prefix + q_idx  # the last key each row may see
    lower = limit - window + 1  # the first (negative without a window)
    if KV_QUANT and q.dtype != tl.float32:
        # 16-bit q over an FP8 cache: e4m3 widens to float16 in one instruction a pair (to
        # bfloat16 in three), and exactly, so the products run in float16. q takes the
        # softmax scale first (|q| up to 65504 / 0.13 fits; beyond, bfloat16's range is
        # clamped to float16's rather than turned into inf); q.(k * ks) = (q.k) * ks leaves
        # K's scale on the scores.
        q = tl.clamp(q.to(tl.float32) * qk_scale, -65504.0, 65504.0).to(tl.float16)
        qk_scale = tl.load(kv_scale_ptr)
    elif KV_QUANT:  # float32 q: exact products, K's scale joins the softmax scale
        qk_scale = qk_scale * tl.load(kv_scale_ptr)
    m_i, l_i, acc = _attend_range(
        q, m_i, l_i, acc, first, a, kv_end, limit, lower, row_ok, bt_row, k_ptr, v_ptr,
        kv_head, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        qk_scale, HEAD_DIM, BLOCK_SIZE, TILE_N, PRECISION, True, INTERPRETED,
    )  # fmt: skip
    m_i, l_i, acc = _attend_range(
        q, m_i, l_i, acc, a, b, kv_end, limit, lower, row_ok, bt_row, k_ptr, v_ptr,
        kv_head, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        qk_scale, HEAD_DIM, BLOCK_SIZE, TILE_N, PRECISION, False, INTERPRETED,
    )  # fmt: skip
    m_i, l_i, acc = _attend_range(
        q, m_i, l_i, acc, b, stop, kv_end, limit, lower, row_ok, bt_row, k_ptr, v_ptr,
        kv_head, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        qk_scale, HEAD_DIM, BLOCK_SIZE, TILE_N, PRECISION, True, INTERPRETED,
    )  # fmt: skip

    if KV_QUANT:  # sum p (v * vs) = vs * sum p v; before the split merge, which is linear
        acc = acc * tl.load(kv_scale_ptr + 1)
    token = q_begin + q_idx
    if not SPLIT:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_rows = out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh
        tl.store(o_rows + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        # Partials: un-normalised acc in part [tokens, heads, segments, dim] (float32); the
        # row max in log2 units. V's scale is already on acc (above), so the merge does not
        # apply it again.
        stat = (token * G * num_kv_heads + head) * num_segments + segment
        tl.store(m_ptr + stat, m_i, mask=row_ok)
        tl.store(l_ptr + stat, l_i, mask=row_ok)
        tl.store(part_ptr + stat[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        if MERGE_LAST:
            # One counter a (request, KV head), zero on entry: the program that takes it to
            # num_segments merges, then sets it back to zero for the next call (or replay).
            counter = count_ptr + q_begin * num_kv_heads + kv_head
            if _is_last_segment(counter, num_segments):
                _merge_last(
                    out_ptr, part_ptr, m_ptr, l_ptr, token, head, row_ok, num_segments,
                    G * num_kv_heads, stride_ot, stride_oh, HEAD_DIM, BLOCK_M, MAX_SEGS,
                )  # fmt: skip
                tl.store(counter, 0)


# Integers that change from step to step are not specialized on (Triton compiles a variant
# for values of 1 and multiples of 16): a new variant compiled mid-serving stalls every
# request for seconds (benchmarks/RESULTS.md, "Serving at saturation", 2026-12-02).
@triton.jit(do_not_specialize=["num_reqs", "num_segments", "window", "stride_bt"])
def paged_attention_kernel(
    q_ptr, k_ptr, v_ptr,
    out_ptr,  # [tokens, heads, dim]: written unless SPLIT without MERGE_LAST
    part_ptr,  # SPLIT: partial acc [tokens, heads, num_segments, dim] float32
    m_ptr, l_ptr,  # SPLIT: partial row max / sum [tokens, heads, num_segments]
    count_ptr,  # MERGE_LAST: [tokens, kv_heads] int32, zero on entry and on exit
    block_table_ptr, seq_lens_ptr, qsl_ptr,
    order_ptr,  # [num_reqs] int32 with ORDERED: the request decode program i serves
    kv_scale_ptr,  # [2] float32, K's and V's scales (read with KV_QUANT only)
    qk_scale, num_reqs, num_segments,  # qk_scale: the softmax scale times log2(e)
    window,  # keys a query sees, itself included (NO_WINDOW: all before it)
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ot, stride_oh,
    stride_bt,
    G: tl.constexpr,  # query heads per kv head
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per KV cache block
    BLOCK_Q: tl.constexpr,  # queries per tile
    BLOCK_M: tl.constexpr,  # rows per tile: next power of two >= BLOCK_Q * G, at least 16
    TILE_N: tl.constexpr,  # keys per inner step, a multiple of BLOCK_SIZE
    DECODE_M: tl.constexpr,  # with MIXED: the rows and keys per step of a one-query request
    DECODE_TILE_N: tl.constexpr,
    # The batch holds prefill chunks: one-query requests take small tiles. False: every
    # request has one query, one tile each (the grid num_reqs).
    MIXED: tl.constexpr,
    ORDERED: tl.constexpr,  # a decode batch's programs take their requests from order_ptr
    SPLIT: tl.constexpr,  # num_segments > 1: write partials
    # With SPLIT in a decode batch (not MIXED): the last program of a (request, KV head)
    # merges its partials into out. Else merge_segments_kernel does, launched after.
    MERGE_LAST: tl.constexpr,
    MAX_SEGS: tl.constexpr,  # MAX_SEGMENTS: the most segments MERGE_LAST combines
    PRECISION: tl.constexpr,  # "ieee" for float32 inputs (exact products), else "tf32"
    KV_QUANT: tl.constexpr,  # the cache holds FP8: stored * scale is the value
    INTERPRETED: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (dependent_launch)
):  # fmt: skip
    await_inputs(PDL)
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    segment = tl.program_id(2)
    if not MIXED:
        # Every request has one query (a decode batch; a decode graph pads with one-query
        # requests): request i is token i. Program i serves request i, or with ORDERED the
        # i-th of the order (longest first: the step's last programs are its shortest).
        req = tl.load(order_ptr + tile) if ORDERED else tile
        q_begin = req
        q_len = 1
        q_tile = 0
    else:
        req = _find_request(qsl_ptr, tile, num_reqs, BLOCK_Q)
        q_begin = tl.load(qsl_ptr + req)
        q_len = tl.load(qsl_ptr + req + 1) - q_begin
        q_tile = tile - (q_begin // BLOCK_Q + req)
        if q_tile * BLOCK_Q >= q_len:
            return
    seq_len = tl.load(seq_lens_ptr + req)
    bt_row = block_table_ptr + req * stride_bt
    if MIXED and q_len == 1:  # a decode beside prefill chunks: a tile of one query's heads
        _attend_queries(
            q_ptr, k_ptr, v_ptr, out_ptr, part_ptr, m_ptr, l_ptr, count_ptr, bt_row,
            kv_scale_ptr, q_begin, q_len, 0, seq_len, kv_head, segment, num_segments,
            tl.num_programs(1), qk_scale, window,
            stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
            stride_vh, stride_ot, stride_oh,
            G, HEAD_DIM, BLOCK_SIZE, 1, DECODE_M, DECODE_TILE_N, SPLIT, False, MAX_SEGS,
            PRECISION, KV_QUANT, INTERPRETED,
        )  # fmt: skip
    else:
        _attend_queries(
            q_ptr, k_ptr, v_ptr, out_ptr, part_ptr, m_ptr, l_ptr, count_ptr, bt_row,
            kv_scale_ptr, q_begin, q_len, q_tile, seq_len, kv_head, segment, num_segments,
            tl.num_programs(1), qk_scale, window,
            stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
            stride_vh, stride_ot, stride_oh,
            G, HEAD_DIM, BLOCK_SIZE, BLOCK_Q, BLOCK_M, TILE_N, SPLIT, MERGE_LAST,
            MAX_SEGS, PRECISION, KV_QUANT, INTERPRETED,
        )  # fmt: skip


@triton.jit(do_not_specialize=["num_segments"])  # see paged_attention_kernel
def merge_segments_kernel(
    part_ptr, m_ptr, l_ptr, out_ptr,
    stride_ot, stride_oh,
    num_heads, num_segments,
    HEAD_DIM: tl.constexpr,
    MAX_SEGMENTS: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """out[token, head] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s (m in log2 units)."""
    await_inputs(PDL)
    token = tl.program_id(0)
    head = tl.program_id(1)
    segs = tl.arange(0, MAX_SEGMENTS)
    seg_ok = segs < num_segments
    dims = tl.arange(0, HEAD_DIM)
    base = (token * num_heads + head) * num_segments
    m = tl.load(m_ptr + base + segs, mask=seg_ok, other=float("-inf"))
    l_seg = tl.load(l_ptr + base + segs, mask=seg_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # segments that saw no key have m = -inf: weight 0
    acc = tl.load(
        part_ptr + (base + segs)[:, None] * HEAD_DIM + dims[None, :],
        mask=seg_ok[:, None],
        other=0.0,
    )
    total = tl.sum(w * l_seg, axis=0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    o = out_ptr + token * stride_ot + head * stride_oh + dims
    tl.store(o, out.to(out_ptr.dtype.element_ty))


# -- the wrapper the rest of the code calls ------------------------------------------------


@functools.cache
def _gpu_launches(index: int) -> AttentionLaunches:
    return launches_for(torch.cuda.get_device_name(index))


def device_launches(device: torch.device) -> AttentionLaunches:
    """The launches tuned for ``device``'s GPU (attention_launch's tables)."""
    if device.type != "cuda":
        return launches_for(None)
    return _gpu_launches(device.index if device.index is not None else torch.cuda.current_device())


def tile_shape(max_query_len: int, group: int, rows: int = 64) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_Q): decodes pack one query's G heads into a 16-row tile; prefill
    chunks take as many queries as fit ``rows`` rows."""
    group_pow2 = triton.next_power_of_2(group)
    if max_query_len == 1:
        return max(16, group_pow2), 1
    block_m = max(rows, group_pow2)
    return block_m, block_m // group_pow2


def prefill_segments(
    q: torch.Tensor, kv_cache: torch.Tensor, num_reqs: int, max_query_len: int,
    max_seq_len: int, num_sms: int,
) -> int:  # fmt: skip
    """Split-KV segments for a step with prefill chunks (``max_query_len`` > 1). A chunk
    over a long cached history (a chat's later turn: 616 new tokens after 6,144) makes
    few programs, ``tokens // BLOCK_Q + num_reqs`` per KV head, about one wave, each
    walking the whole history: past ~6,000 keys, splitting the walk pays for writing and
    merging the float32 partials. 1 where the grid already holds PREFILL_WAVES programs a
    multiprocessor or the keys are too few."""
    if max_seq_len < PREFILL_SEGMENTS * MIN_PREFILL_SEGMENT_KEYS:
        return 1
    tokens, heads, _ = q.shape
    kv_heads = kv_cache.shape[3]
    config = launch_config(max_query_len, kv_cache.dtype != q.dtype, device_launches(q.device))
    _, block_q = tile_shape(max_query_len, heads // kv_heads, config.rows)
    programs = (tokens // block_q + num_reqs) * kv_heads
    return PREFILL_SEGMENTS if programs < PREFILL_WAVES * num_sms else 1


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    out: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_reqs: int,
    max_query_len: int,
    scale: float,
    num_segments: int = 1,
    partials: tuple[torch.Tensor, ...] | None = None,
    config: LaunchConfig | None = None,
    kv_scale: torch.Tensor | None = None,
    window: int | None = None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of q over the paged cache into ``out`` (same shape as q); with ``window``,
    each query sees only the last ``window`` keys up to itself. ``order`` (decode batches:
    a permutation of ``0 .. num_reqs - 1``, int32 on q's device) is the order the programs
    take the requests in; longest first keeps the step's tail short.

    q: [tokens, heads, dim]; kv_cache: [2, blocks, block_size, kv_heads, dim] with the new
    K/V already written; block_table [>= num_reqs, max_blocks] int32; seq_lens
    [>= num_reqs] int32; query_start_loc [>= num_reqs + 1] int32. With num_segments > 1,
    ``partials`` holds float32 scratch: acc [tokens, heads, segments, dim] and the row max
    and sum [tokens, heads, segments], then optionally counters [>= tokens, kv_heads] int32
    (contiguous). Invariant: the counters are all zero on entry and are all zero again on
    return (so one buffer serves every call and every CUDA graph replay); nothing else may
    write them. With them, a decode batch (max_query_len 1) merges its segments inside
    the attention kernel: the last program of each (request, KV head) to finish combines
    them, one launch in all. Steps with prefill chunks ignore them and merge in a second
    kernel (``merge_segments_kernel``), as a decode batch does without them. An FP8
    ``kv_cache`` needs ``kv_scale`` ([2] float32, K's and V's): the value of a stored entry
    is ``stored * scale``.
    """
    _check(q, kv_cache, out, block_table, seq_lens, query_start_loc)
    if window is not None and not 0 < window < NO_WINDOW:
        raise ValueError(f"window must be in 1..{NO_WINDOW - 1}, got {window}")
    quant = kv_cache.dtype != q.dtype
    if quant and (kv_scale is None or kv_scale.numel() != 2 or kv_scale.dtype != torch.float32):
        raise ValueError("an FP8 kv_cache needs kv_scale: [2] float32 (K's and V's scales)")
    tokens, heads, dim = q.shape
    _, _, block_size, kv_heads, _ = kv_cache.shape
    group = heads // kv_heads
    config = config or launch_config(max_query_len, quant, device_launches(q.device))
    block_m, block_q = tile_shape(max_query_len, group, config.rows)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    decode = max_query_len == 1
    if decode and tokens != num_reqs:
        raise ValueError(f"a decode batch (max_query_len 1) has one token a request: "
                         f"{tokens} tokens, {num_reqs} requests")  # fmt: skip
    if order is not None and (not decode or order.dtype != torch.int32
                              or order.shape[0] < num_reqs):  # fmt: skip
        raise ValueError("order is for decode batches: int32, one entry a request")
    grid = (num_reqs if decode else tokens // block_q + num_reqs, kv_heads, num_segments)
    split = num_segments > 1
    counters = None
    if split:
        if num_segments > MAX_SEGMENTS:
            raise ValueError(f"num_segments must be at most {MAX_SEGMENTS}, got {num_segments}")
        assert partials is not None and partials[0].shape[:3] == (tokens, heads, num_segments)
        part, m, l_sum = partials[:3]
        counters = partials[3] if len(partials) > 3 and decode else None
        if counters is not None and (
            counters.dtype != torch.int32 or counters.dim() != 2 or counters.shape[0] < tokens
            or counters.shape[1] != kv_heads or not counters.is_contiguous()
        ):  # fmt: skip
            raise ValueError("counters must be [>= tokens, kv_heads] int32, contiguous")
    else:
        part, m, l_sum = out, out, out
    merge_last = counters is not None
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    tile_n = max(config.tile_n, block_size)
    decode_m, _ = tile_shape(1, group)
    launch = dependent_launch.launch_args(q.device)
    paged_attention_kernel[grid](
        q, k_cache, v_cache, out, part, m, l_sum, counters if merge_last else seq_lens,
        block_table, seq_lens, query_start_loc, seq_lens if order is None else order,
        kv_scale if quant else seq_lens,
        scale * LOG2E, num_reqs, num_segments, NO_WINDOW if window is None else window,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1),
        block_table.stride(0),
        G=group, HEAD_DIM=dim, BLOCK_SIZE=block_size, BLOCK_Q=block_q, BLOCK_M=block_m,
        TILE_N=tile_n, DECODE_M=decode_m, DECODE_TILE_N=max(DECODE_CONFIG.tile_n, block_size),
        MIXED=not decode, ORDERED=order is not None, SPLIT=split, MERGE_LAST=merge_last,
        MAX_SEGS=MAX_SEGMENTS, PRECISION=precision,
        KV_QUANT=quant, INTERPRETED=_INTERPRETED, num_warps=config.num_warps,
        num_stages=config.num_stages, **register_cap(config, _INTERPRETED), **launch,
    )  # fmt: skip
    if split and not merge_last:
        merge_segments_kernel[(tokens, heads)](
            part, m, l_sum, out, out.stride(0), out.stride(1), heads, num_segments,
            HEAD_DIM=dim, MAX_SEGMENTS=MAX_SEGMENTS, **launch,
        )  # fmt: skip
    return out


def _check(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    out: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
) -> None:
    if q.dim() != 3 or kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(f"bad shapes: q {tuple(q.shape)}, kv_cache {tuple(kv_cache.shape)}")
    heads, dim = q.shape[1], q.shape[2]
    kv_heads = kv_cache.shape[3]
    if kv_cache.shape[4] != dim or heads % kv_heads:
        raise ValueError(f"q {tuple(q.shape)} does not fit kv_cache {tuple(kv_cache.shape)}")
    if dim not in (64, 128) and triton.next_power_of_2(dim) != dim:
        raise ValueError(f"head_dim {dim} is not supported (64, 128 or a power of two)")
    if kv_cache.dtype not in (q.dtype, *FP8_CACHE_DTYPES) or out.dtype != q.dtype:
        raise ValueError("kv_cache must hold q's dtype or FP8, and out q's dtype")
    if out.shape != q.shape:
        raise ValueError("out must be q's shape")
    if q.stride(2) != 1 or kv_cache.stride(4) != 1 or out.stride(2) != 1:
        raise ValueError("the head dimension must be contiguous in q, kv_cache and out")
    for name, t in (("block_table", block_table), ("seq_lens", seq_lens),
                    ("query_start_loc", query_start_loc)):  # fmt: skip
        if t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {t.dtype}")
    if block_table.stride(1) != 1:
        raise ValueError("block_table rows must be contiguous")
