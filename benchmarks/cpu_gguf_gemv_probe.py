"""One-row products on GGUF's Q4_1 and Q8_0 blocks as stored, by a kernel of our own
(issue 21's single stream), against float32 ``F.linear`` on the dequantized weights.

The last stop's probe (RESULTS "4-bit weights for CPU single-stream decode, a probe") left a
4-bit product and a widening kernel of the project's own as the way to llama.cpp's single
stream, and the LM head's Q8_0 without any torch kernel. Before building either into the
engine, this measures what a plain AVX2 kernel reaches on the bundled SmolLM2's tensors as
the file stores them (no repacking, no extra copy: the weights in memory are the file's
bytes), and checks each result against the dequantized float32 product.

Compiled here with torch's C++ extension loader (g++ with AVX2, FMA and F16C; ~1 minute the
first time), so it runs on a machine with a compiler only. Not used by the engine.

    python benchmarks/cpu_gguf_gemv_probe.py [--threads 2] [--reps 200]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from pagedllm.model_files import bundled_gguf_path

# y[n] = sum over blocks b of row n: d * (codes . x_b) (+ m * sum(x_b) for Q4_1). The
# block's codes are widened to float32 eight at a time and multiplied into one 8-lane
# accumulator per row, scaled by d per block: one horizontal sum per row, not per block.
SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 widen8(__m128i bytes) {  // the low 8 unsigned bytes as floats
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}

static inline __m256 widen8s(__m128i bytes) {  // the low 8 signed bytes as floats
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

static inline float half(const uint8_t* p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// Q4_1 block (20 bytes): d, m (float16), 16 bytes of codes; byte j holds element j in its
// low nibble and element j + 16 in its high one; value = code * d + m.
torch::Tensor q4_1_gemv(torch::Tensor w, torch::Tensor x) {
    const int64_t n = w.size(0), k = x.size(0), blocks = k / 32;
    TORCH_CHECK(w.size(1) == blocks * 20 && k % 32 == 0, "q4_1_gemv: shapes");
    auto y = torch::empty({n}, x.options());
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    std::vector<float> sums(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
        float s = 0;
        for (int i = 0; i < 32; ++i) s += xp[b * 32 + i];
        sums[b] = s;
    }
    const __m128i mask = _mm_set1_epi8(0x0F);
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const uint8_t* row = wp + r * blocks * 20;
            __m256 acc = _mm256_setzero_ps();
            float mins = 0;
            for (int64_t b = 0; b < blocks; ++b) {
                const uint8_t* blk = row + b * 20;
                const float* xb = xp + b * 32;
                __m128i qs = _mm_loadu_si128((const __m128i*)(blk + 4));
                __m128i lo = _mm_and_si128(qs, mask);
                __m128i hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                __m256 dot = _mm256_mul_ps(widen8(lo), _mm256_loadu_ps(xb));
                __m128i loh = _mm_srli_si128(lo, 8), hih = _mm_srli_si128(hi, 8);
                dot = _mm256_fmadd_ps(widen8(loh), _mm256_loadu_ps(xb + 8), dot);
                dot = _mm256_fmadd_ps(widen8(hi), _mm256_loadu_ps(xb + 16), dot);
                dot = _mm256_fmadd_ps(widen8(hih), _mm256_loadu_ps(xb + 24), dot);
                acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(half(blk)), acc);
                mins += half(blk + 2) * sums[b];
            }
            yp[r] = hsum(acc) + mins;
        }
    });
    return y;
}

// Q8_0 block (34 bytes): d (float16), 32 signed bytes; value = code * d.
torch::Tensor q8_0_gemv(torch::Tensor w, torch::Tensor x) {
    const int64_t n = w.size(0), k = x.size(0), blocks = k / 32;
    TORCH_CHECK(w.size(1) == blocks * 34 && k % 32 == 0, "q8_0_gemv: shapes");
    auto y = torch::empty({n}, x.options());
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const uint8_t* row = wp + r * blocks * 34;
            __m256 acc = _mm256_setzero_ps();
            for (int64_t b = 0; b < blocks; ++b) {
                const uint8_t* blk = row + b * 34;
                const float* xb = xp + b * 32;
                __m128i q0 = _mm_loadu_si128((const __m128i*)(blk + 2));
                __m128i q1 = _mm_loadu_si128((const __m128i*)(blk + 18));
                __m256 dot = _mm256_mul_ps(widen8s(q0), _mm256_loadu_ps(xb));
                __m128i q0h = _mm_srli_si128(q0, 8), q1h = _mm_srli_si128(q1, 8);
                dot = _mm256_fmadd_ps(widen8s(q0h), _mm256_loadu_ps(xb + 8), dot);
                dot = _mm256_fmadd_ps(widen8s(q1), _mm256_loadu_ps(xb + 16), dot);
                dot = _mm256_fmadd_ps(widen8s(q1h), _mm256_loadu_ps(xb + 24), dot);
                acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(half(blk)), acc);
            }
            yp[r] = hsum(acc);
        }
    });
    return y;
}

// Several rows (batched decode): each weight row is widened once into a float32 buffer
// (code * d + m, exact), then dotted with every input row; the widening is shared by the
// rows, the products are plain FMAs over L1-resident data.
static inline float dot(const float* a, const float* b, int64_t k) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    return hsum(_mm256_add_ps(s0, s1));
}

static void widen_q4_1(const uint8_t* row, int64_t blocks, float* out) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = row + b * 20;
        __m256 d = _mm256_set1_ps(half(blk)), m = _mm256_set1_ps(half(blk + 2));
        __m128i qs = _mm_loadu_si128((const __m128i*)(blk + 4));
        __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
        float* o = out + b * 32;
        _mm256_storeu_ps(o, _mm256_fmadd_ps(widen8(lo), d, m));
        _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(widen8(_mm_srli_si128(lo, 8)), d, m));
        _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(widen8(hi), d, m));
        _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(widen8(_mm_srli_si128(hi, 8)), d, m));
    }
}

static void widen_q8_0(const uint8_t* row, int64_t blocks, float* out) {
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = row + b * 34;
        __m256 d = _mm256_set1_ps(half(blk));
        __m128i q0 = _mm_loadu_si128((const __m128i*)(blk + 2));
        __m128i q1 = _mm_loadu_si128((const __m128i*)(blk + 18));
        float* o = out + b * 32;
        _mm256_storeu_ps(o, _mm256_mul_ps(widen8s(q0), d));
        _mm256_storeu_ps(o + 8, _mm256_mul_ps(widen8s(_mm_srli_si128(q0, 8)), d));
        _mm256_storeu_ps(o + 16, _mm256_mul_ps(widen8s(q1), d));
        _mm256_storeu_ps(o + 24, _mm256_mul_ps(widen8s(_mm_srli_si128(q1, 8)), d));
    }
}

static torch::Tensor rows_mm(torch::Tensor w, torch::Tensor x, int64_t block_bytes,
                             void (*widen)(const uint8_t*, int64_t, float*)) {
    const int64_t n = w.size(0), rows = x.size(0), k = x.size(1), blocks = k / 32;
    TORCH_CHECK(w.size(1) == blocks * block_bytes && k % 32 == 0, "rows_mm: shapes");
    auto y = torch::empty({rows, n}, x.options());
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
        std::vector<float> wide(k);
        for (int64_t r = begin; r < end; ++r) {
            widen(wp + r * blocks * block_bytes, blocks, wide.data());
            for (int64_t i = 0; i < rows; ++i) yp[i * n + r] = dot(wide.data(), xp + i * k, k);
        }
    });
    return y;
}

// One block's 32 values as 4 vectors of 8 (exact widening, as above).
static inline void block_q4_1(const uint8_t* blk, __m256* v) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m256 d = _mm256_set1_ps(half(blk)), m = _mm256_set1_ps(half(blk + 2));
    __m128i qs = _mm_loadu_si128((const __m128i*)(blk + 4));
    __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
    v[0] = _mm256_fmadd_ps(widen8(lo), d, m);
    v[1] = _mm256_fmadd_ps(widen8(_mm_srli_si128(lo, 8)), d, m);
    v[2] = _mm256_fmadd_ps(widen8(hi), d, m);
    v[3] = _mm256_fmadd_ps(widen8(_mm_srli_si128(hi, 8)), d, m);
}

static inline void block_q8_0(const uint8_t* blk, __m256* v) {
    __m256 d = _mm256_set1_ps(half(blk));
    __m128i q0 = _mm_loadu_si128((const __m128i*)(blk + 2));
    __m128i q1 = _mm_loadu_si128((const __m128i*)(blk + 18));
    v[0] = _mm256_mul_ps(widen8s(q0), d);
    v[1] = _mm256_mul_ps(widen8s(_mm_srli_si128(q0, 8)), d);
    v[2] = _mm256_mul_ps(widen8s(q1), d);
    v[3] = _mm256_mul_ps(widen8s(_mm_srli_si128(q1, 8)), d);
}

// r[j] holds row j's 8 values; afterwards r[i] holds value i of the 8 rows.
static inline void transpose8(__m256* r) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        s[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
    }
}

// The same product register-blocked: 16 weight rows widened into a [k][16] panel (L1/L2)
// by vector transposes, then 6 input rows at a time: each k step two panel loads, 6
// broadcasts and 12 FMAs into 12 accumulators (6 rows x 16 outputs; 15 of AVX2's 16
// registers). n must be a multiple of 16.
static torch::Tensor panel_mm(torch::Tensor w, torch::Tensor x, int64_t block_bytes,
                              void (*block)(const uint8_t*, __m256*)) {
    const int64_t n = w.size(0), rows = x.size(0), k = x.size(1), blocks = k / 32;
    TORCH_CHECK(w.size(1) == blocks * block_bytes && k % 32 == 0 && n % 16 == 0, "panel_mm");
    auto y = torch::empty({rows, n}, x.options());
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const int64_t row_bytes = blocks * block_bytes;
    at::parallel_for(0, n / 16, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> panel(k * 16);
        for (int64_t t = begin; t < end; ++t) {
            for (int half8 = 0; half8 < 2; ++half8) {
                const uint8_t* first = wp + (t * 16 + half8 * 8) * row_bytes;
                for (int64_t b = 0; b < blocks; ++b) {
                    __m256 v[8][4];
                    const uint8_t* at = first + b * block_bytes;
                    for (int j = 0; j < 8; ++j) block(at + j * row_bytes, v[j]);
                    for (int q = 0; q < 4; ++q) {
                        __m256 r[8];
                        for (int j = 0; j < 8; ++j) r[j] = v[j][q];
                        transpose8(r);
                        float* out = panel.data() + (b * 32 + q * 8) * 16 + half8 * 8;
                        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + i * 16, r[i]);
                    }
                }
            }
            const float* pp = panel.data();
            int64_t r = 0;
            for (; r + 6 <= rows; r += 6) {
                const float* x0 = xp + r * k;
                __m256 a[6][2];
                for (int i = 0; i < 6; ++i) a[i][0] = a[i][1] = _mm256_setzero_ps();
                for (int64_t c = 0; c < k; ++c) {
                    __m256 w0 = _mm256_loadu_ps(pp + c * 16), w1 = _mm256_loadu_ps(pp + c * 16 + 8);
                    for (int i = 0; i < 6; ++i) {
                        __m256 xv = _mm256_broadcast_ss(x0 + i * k + c);
                        a[i][0] = _mm256_fmadd_ps(xv, w0, a[i][0]);
                        a[i][1] = _mm256_fmadd_ps(xv, w1, a[i][1]);
                    }
                }
                for (int i = 0; i < 6; ++i) {
                    float* out = yp + (r + i) * n + t * 16;
                    _mm256_storeu_ps(out, a[i][0]);
                    _mm256_storeu_ps(out + 8, a[i][1]);
                }
            }
            for (; r < rows; ++r) {
                __m256 a0 = _mm256_setzero_ps(), a1 = a0;
                for (int64_t c = 0; c < k; ++c) {
                    __m256 xv = _mm256_broadcast_ss(xp + r * k + c);
                    a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(pp + c * 16), a0);
                    a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(pp + c * 16 + 8), a1);
                }
                _mm256_storeu_ps(yp + r * n + t * 16, a0);
                _mm256_storeu_ps(yp + r * n + t * 16 + 8, a1);
            }
        }
    });
    return y;
}

torch::Tensor q4_1_mm(torch::Tensor w, torch::Tensor x) { return rows_mm(w, x, 20, widen_q4_1); }
torch::Tensor q8_0_mm(torch::Tensor w, torch::Tensor x) { return rows_mm(w, x, 34, widen_q8_0); }
torch::Tensor q4_1_panel(torch::Tensor w, torch::Tensor x) {
    return panel_mm(w, x, 20, block_q4_1);
}
torch::Tensor q8_0_panel(torch::Tensor w, torch::Tensor x) {
    return panel_mm(w, x, 34, block_q8_0);
}
"""

KERNELS = {GGMLQuantizationType.Q4_1: "q4_1_gemv", GGMLQuantizationType.Q8_0: "q8_0_gemv"}
BATCHED = {GGMLQuantizationType.Q4_1: "q4_1_mm", GGMLQuantizationType.Q8_0: "q8_0_mm"}
PANEL = {GGMLQuantizationType.Q4_1: "q4_1_panel", GGMLQuantizationType.Q8_0: "q8_0_panel"}


def build() -> object:
    from torch.utils.cpp_extension import load_inline

    return load_inline(
        name="pagedllm_gguf_gemv_probe",
        cpp_sources=SOURCE,
        functions=[*KERNELS.values(), *BATCHED.values(), *PANEL.values()],
        extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )


def best_us(fn, reps: int) -> float:
    """Median of five best-of-``reps`` timings, µs per call."""
    rounds = []
    for _ in range(5):
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        rounds.append(best)
    return statistics.median(rounds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ext = build()
    reader = GGUFReader(bundled_gguf_path())
    quantized = [t for t in reader.tensors if t.tensor_type in KERNELS]
    counts = Counter((t.tensor_type.name, tuple(t.data.shape)) for t in quantized)
    generator = torch.Generator().manual_seed(0)
    rows = [
        "| tensor (type, stored bytes) | per token | ours µs | float32 F.linear µs | ours / "
        "float32 | ours GB/s | max rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    total = {"ours": 0.0, "float32": 0.0}
    seen = set()
    for t in quantized:
        key = (t.tensor_type.name, tuple(t.data.shape))
        if key in seen:
            continue
        seen.add(key)
        stored = torch.from_numpy(np.array(t.data))
        dense = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
        n, k = dense.shape
        x = torch.randn(k, generator=generator)
        gemv = getattr(ext, KERNELS[t.tensor_type])
        got, want = gemv(stored, x), F.linear(x[None], dense)[0]
        error = ((got - want).abs().max() / want.abs().max()).item()
        ours = best_us(functools.partial(gemv, stored, x), args.reps)
        plain = best_us(functools.partial(F.linear, x[None], dense), args.reps)
        per_token = counts[key]
        total["ours"] += per_token * ours
        total["float32"] += per_token * plain
        rate = stored.numel() / ours / 1e3
        rows.append(
            f"| {t.tensor_type.name} {n}x{k} ({stored.numel() / 1e6:.2f} MB) | {per_token} | "
            f"{ours:.1f} | {plain:.1f} | {ours / plain:.2f} | {rate:.1f} | {error:.1e} |"
        )
    rows.append(
        f"\nsum over the {sum(counts.values())} products of a token, each timed warm in "
        f"cache: ours {total['ours'] / 1e3:.2f} ms, float32 {total['float32'] / 1e3:.2f} ms"
    )
    header = [
        "| rows | ours | float32 F.linear | float32 / ours |",
        "|---|---|---|---|",
    ]
    reps = args.reps // 20 + 1
    rows += [
        "\na decode step's 211 products in turn, each on its own weights (from memory): ours "
        "on the file's 96 MB (one row: the one-row kernel; several: a weight row widened "
        "into L1 and dotted with each input row), float32 on the dequantized 538 MB",
        *header,
        *(token_times(ext, quantized, reps, r) for r in (1, 2, 8, 32)),
        "\nseveral rows by the register-blocked kernel (16 weight rows widened into a panel "
        "by vector transposes, 6 input rows a pass)",
        *header,
        *(token_times(ext, quantized, reps, r, PANEL) for r in (2, 8, 32)),
    ]
    check_batched(ext, quantized)
    print(f"{args.threads} threads\n" + "\n".join(rows))


def check_batched(ext: object, tensors: list) -> None:
    """The widening kernel against the dequantized product, on one tensor of each type."""
    for kind in BATCHED:
        t = next(t for t in tensors if t.tensor_type == kind)
        dense = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
        x = torch.randn(13, dense.shape[1])  # two blocks of 6 rows and a remainder
        want = F.linear(x, dense)
        for name in (BATCHED[kind], PANEL[kind]):
            got = getattr(ext, name)(torch.from_numpy(np.array(t.data)), x)
            error = ((got - want).abs().max() / want.abs().max()).item()
            assert error < 1e-5, f"{name}: relative error {error:.1e}"


def token_times(
    ext: object, tensors: list, reps: int, rows: int = 1, batched: dict | None = None
) -> str:
    """Every product of a decode step of ``rows`` sequences in the file's order, each on
    its own weights (so they stream from memory as in decoding): ours on the stored bytes
    (the one-row kernel, or the widening one for several rows), float32 on dequantized
    copies. Best of ``reps`` steps."""
    ours, plain = [], []
    for t in tensors:
        stored = torch.from_numpy(np.array(t.data))
        dense = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
        x = torch.randn(rows, dense.shape[1])
        kernel = KERNELS if rows == 1 else (batched or BATCHED)
        ours.append((getattr(ext, kernel[t.tensor_type]), stored, x[0] if rows == 1 else x))
        plain.append((dense, x))
    stored_mb = sum(w.numel() for _, w, _ in ours) / 1e6
    dense_mb = sum(w.numel() * 4 for w, _ in plain) / 1e6

    def run_ours() -> None:
        for gemv, w, x in ours:
            gemv(w, x)

    def run_plain() -> None:
        for w, x in plain:
            F.linear(x, w)

    a, b = best_us(run_ours, reps) / 1e3, best_us(run_plain, reps) / 1e3
    return (
        f"| {rows} | {a:.2f} ms ({stored_mb / a:.1f} GB/s) | {b:.2f} ms ({dense_mb / b:.1f} "
        f"GB/s) | {b / a:.2f}x |"
    )


if __name__ == "__main__":
    main()
