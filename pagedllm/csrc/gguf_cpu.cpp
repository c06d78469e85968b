// Products and row lookups on GGUF's quantized blocks as the file stores them (Q4_0, Q4_1,
// Q8_0, Q4_K, Q6_K), for the CPU: the weights in memory are the file's bytes, widened to float32 in
// registers as each product reads them. AVX2 + FMA + F16C; built by pagedllm/kernels/
// cpu_extension.py (bindings in cpu_extension.cpp). A row is whole (super-)blocks of
// consecutive input columns, so rows may be concatenated or permuted freely (fused q/k/v).
//
//   Q4_0 (18 bytes / 32 values): d (float16), 16 bytes of 4-bit codes; (code - 8) * d
//   Q4_1 (20 bytes / 32 values): d, m (float16), 16 bytes of codes;     code * d + m
//   Q8_0 (34 bytes / 32 values): d (float16), 32 signed bytes;          code * d
//   Q4_K (144 bytes / 256 values), Q6_K (210 bytes / 256 values): below
// In a Q4_0 / Q4_1 block, byte j holds element j in its low nibble and element j + 16 in its
// high one.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"

namespace {

constexpr int64_t kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8, kQ4_K = 12, kQ6_K = 14;  // GGML types
// Up to kGemvRows input rows, one gemv each (widening every weight row costs more than
// reading the blocks again: crossover ~7 rows on this CPU); up to kFewRows, gemm_few; more
// (prefill chunks), the register-blocked panels (a run of those rows, chunked through
// gemm_few instead, made a 500-token prefill ~15% slower).
constexpr int64_t kGemvRows = 6;
constexpr int64_t kFewRows = 64;

inline __m256 widen8u(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }
inline __m256 widen8s(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)); }

inline float half(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// The 32 four-bit codes of a block whose codes start ``offset`` bytes in, as below.
template <int offset>
inline void nibble_codes(const uint8_t* blk, __m256* c) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + offset));
    __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
    c[0] = widen8u(lo);
    c[1] = widen8u(_mm_srli_si128(lo, 8));
    c[2] = widen8u(hi);
    c[3] = widen8u(_mm_srli_si128(hi, 8));
}

// Each type: a block's codes as four vectors of 8 (elements 0-7, 8-15, 16-23, 24-31),
// before scaling, and its scale d and offset m: value = code * d + m.
struct Q4_0 {
    static constexpr int64_t bytes = 18;
    static inline void codes(const uint8_t* blk, __m256* c) { nibble_codes<2>(blk, c); }
    static inline float d(const uint8_t* blk) { return half(blk); }
    static inline float m(const uint8_t* blk) { return -8.0f * half(blk); }
};

struct Q4_1 {
    static constexpr int64_t bytes = 20;
    static inline void codes(const uint8_t* blk, __m256* c) { nibble_codes<4>(blk, c); }
    static inline float d(const uint8_t* blk) { return half(blk); }
    static inline float m(const uint8_t* blk) { return half(blk + 2); }
};

struct Q8_0 {
    static constexpr int64_t bytes = 34;
    static inline void codes(const uint8_t* blk, __m256* c) {
        __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
        __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
        c[0] = widen8s(q0);
        c[1] = widen8s(_mm_srli_si128(q0, 8));
        c[2] = widen8s(q1);
        c[3] = widen8s(_mm_srli_si128(q1, 8));
    }
    static inline float d(const uint8_t* blk) { return half(blk); }
    static inline float m(const uint8_t*) { return 0.0f; }
};

// The kernels read block b (values 32b .. 32b + 31) of a row by B::load: its codes, scale d
// and offset m; B::row_bytes(k) is a row's size. A type whose blocks lie one after another:
template <class T>
struct Flat {
    static constexpr int64_t row_bytes(int64_t k) { return k / 32 * T::bytes; }
    static inline void load(const uint8_t* row, int64_t b, __m256* c, float& d, float& m) {
        const uint8_t* blk = row + b * T::bytes;
        T::codes(blk, c);
        d = T::d(blk);
        m = T::m(blk);
    }
};

// Q4_K: super-blocks of 256 values (144 bytes: d, dmin (float16), 12 bytes of 6-bit scales
// and minimums for its 8 sub-blocks of 32, then 128 bytes of codes: byte i of 32-byte chunk
// c holds value i of sub-block 2c in its low nibble and of sub-block 2c + 1 in its high).
// Sub-block j's value = code * (d * scale_j) - dmin * min_j; 18 bytes per 32 values.
struct Q4_K {
    static constexpr int64_t row_bytes(int64_t k) { return k / 256 * 144; }
    static inline void load(const uint8_t* row, int64_t b, __m256* c, float& d, float& m) {
        const uint8_t* sb = row + (b / 8) * 144;
        const int j = static_cast<int>(b % 8);
        const uint8_t* s = sb + 4;
        int scale, low;
        if (j < 4) {
            scale = s[j] & 63;
            low = s[j + 4] & 63;
        } else {
            scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
            low = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        d = half(sb) * scale;
        m = -half(sb + 2) * low;
        __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 16 + (j / 2) * 32));
        if (j % 2) qs = _mm256_srli_epi16(qs, 4);
        qs = _mm256_and_si256(qs, _mm256_set1_epi8(0x0F));
        const __m128i lo = _mm256_castsi256_si128(qs), hi = _mm256_extracti128_si256(qs, 1);
        c[0] = widen8u(lo);
        c[1] = widen8u(_mm_srli_si128(lo, 8));
        c[2] = widen8u(hi);
        c[3] = widen8u(_mm_srli_si128(hi, 8));
    }
};

// Q6_K: super-blocks of 256 values (210 bytes: 128 bytes of low 4 bits, 64 of high 2 bits,
// 16 signed scales (one per 16 values), then d (float16)). Sub-block j = 4h + q of the
// 32-value sub-blocks takes, for value l: the low (q < 2) or high nibble of byte l + 32 (q % 2)
// of half h's low bits, and bits 2q, 2q + 1 of byte l of its high bits; value = d *
// scale * (code - 32). The codes returned are (code - 32) * scale (exact), d the block's.
struct Q6_K {
    static constexpr int64_t row_bytes(int64_t k) { return k / 256 * 210; }
    static inline void load(const uint8_t* row, int64_t b, __m256* c, float& d, float& m) {
        const uint8_t* sb = row + (b / 8) * 210;
        const int j = static_cast<int>(b % 8), h = j / 4, q = j % 4;
        const __m256i mask = _mm256_set1_epi8(0x0F);
        __m256i low = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(sb + h * 64 + (q % 2) * 32));
        if (q >= 2) low = _mm256_srli_epi16(low, 4);
        low = _mm256_and_si256(low, mask);
        __m256i high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 128 + h * 32));
        high = _mm256_and_si256(_mm256_srli_epi16(high, 2 * q), _mm256_set1_epi8(3));
        const __m256i codes = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));  // 0..63
        const int8_t* scales = reinterpret_cast<const int8_t*>(sb + 192) + h * 8 + 2 * q;
        const __m256 first = _mm256_set1_ps(scales[0]), second = _mm256_set1_ps(scales[1]);
        const __m128i lo = _mm256_castsi256_si128(codes), hi = _mm256_extracti128_si256(codes, 1);
        const __m256 bias = _mm256_set1_ps(32.0f);
        c[0] = _mm256_mul_ps(_mm256_sub_ps(widen8u(lo), bias), first);
        c[1] = _mm256_mul_ps(_mm256_sub_ps(widen8u(_mm_srli_si128(lo, 8)), bias), first);
        c[2] = _mm256_mul_ps(_mm256_sub_ps(widen8u(hi), bias), second);
        c[3] = _mm256_mul_ps(_mm256_sub_ps(widen8u(_mm_srli_si128(hi, 8)), bias), second);
        d = half(sb + 208);
        m = 0.0f;
    }
};

// Block b's 32 values (exact: code * d + m in float32).
template <class B>
inline void values(const uint8_t* row, int64_t b, __m256* v) {
    float d, m;
    B::load(row, b, v, d, m);
    const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
    for (int q = 0; q < 4; ++q) v[q] = _mm256_fmadd_ps(v[q], dv, mv);
}

template <class B>
void widen_row(const uint8_t* row, int64_t blocks, float* out) {
    for (int64_t b = 0; b < blocks; ++b) {
        __m256 v[4];
        values<B>(row, b, v);
        for (int q = 0; q < 4; ++q) _mm256_storeu_ps(out + b * 32 + q * 8, v[q]);
    }
}

// One input row: per weight row, the codes are multiplied into one 8-lane accumulator and
// scaled once per block; a block's offset m multiplies the block's input sum, added once.
template <class B>
void gemv(const uint8_t* w, int64_t n, int64_t k, const float* x, float* y) {
    const int64_t blocks = k / 32;
    std::vector<float> sums(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
        float s = 0;
        for (int i = 0; i < 32; ++i) s += x[b * 32 + i];
        sums[b] = s;
    }
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const uint8_t* row = w + r * B::row_bytes(k);
            __m256 acc = _mm256_setzero_ps();
            float offsets = 0;
            for (int64_t b = 0; b < blocks; ++b) {
                const float* xb = x + b * 32;
                __m256 c[4];
                float d, m;
                B::load(row, b, c, d, m);
                __m256 dot = _mm256_mul_ps(c[0], _mm256_loadu_ps(xb));
                for (int q = 1; q < 4; ++q) dot = _mm256_fmadd_ps(c[q], _mm256_loadu_ps(xb + q * 8), dot);
                acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(d), acc);
                offsets += m * sums[b];
            }
            y[r] = hsum(acc) + offsets;
        }
    });
}

inline float dot(const float* a, const float* b, int64_t k) {  // k a multiple of 32
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    return hsum(_mm256_add_ps(s0, s1));
}

// r[j] holds row j's 8 values; afterwards r[i] holds value i of the 8 rows.
inline void transpose8(__m256* r) {
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

// 16 weight rows widened into a [k][16] panel (value c of row j at c * 16 + j).
template <class B>
void fill_panel(const uint8_t* first, int64_t row_bytes, int64_t blocks, float* panel) {
    for (int half8 = 0; half8 < 2; ++half8) {
        const uint8_t* rows = first + half8 * 8 * row_bytes;
        for (int64_t b = 0; b < blocks; ++b) {
            __m256 v[8][4];
            for (int j = 0; j < 8; ++j) values<B>(rows + j * row_bytes, b, v[j]);
            for (int q = 0; q < 4; ++q) {
                __m256 r[8];
                for (int j = 0; j < 8; ++j) r[j] = v[j][q];
                transpose8(r);
                float* out = panel + (b * 32 + q * 8) * 16 + half8 * 8;
                for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + i * 16, r[i]);
            }
        }
    }
}

// Several input rows: per tile of 16 weight rows, a panel (in L1/L2), then 6 input rows a
// pass: each column two panel loads, 6 broadcasts and 12 FMAs into 12 accumulators (6 rows
// x 16 outputs). The n % 16 rows past the last whole tile: each widened once, then dotted
// with every input row.
template <class B>
void gemm(const uint8_t* w, int64_t n, int64_t k, const float* x, int64_t rows, float* y) {
    const int64_t blocks = k / 32, row_bytes = B::row_bytes(k), tiles = n / 16;
    at::parallel_for(0, tiles + (n % 16 != 0), 1, [&](int64_t begin, int64_t end) {
        std::vector<float> panel(k * 16);
        const float* pp = panel.data();
        for (int64_t t = begin; t < end; ++t) {
            if (t == tiles) {  // the partial tile
                for (int64_t o = tiles * 16; o < n; ++o) {
                    widen_row<B>(w + o * row_bytes, blocks, panel.data());
                    for (int64_t i = 0; i < rows; ++i) y[i * n + o] = dot(pp, x + i * k, k);
                }
                continue;
            }
            fill_panel<B>(w + t * 16 * row_bytes, row_bytes, blocks, panel.data());
            int64_t r = 0;
            for (; r + 6 <= rows; r += 6) {
                const float* x0 = x + r * k;
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
                    float* out = y + (r + i) * n + t * 16;
                    _mm256_storeu_ps(out, a[i][0]);
                    _mm256_storeu_ps(out + 8, a[i][1]);
                }
            }
            for (; r < rows; ++r) {
                __m256 a0 = _mm256_setzero_ps(), a1 = a0;
                for (int64_t c = 0; c < k; ++c) {
                    __m256 xv = _mm256_broadcast_ss(x + r * k + c);
                    a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(pp + c * 16), a0);
                    a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(pp + c * 16 + 8), a1);
                }
                _mm256_storeu_ps(y + r * n + t * 16, a0);
                _mm256_storeu_ps(y + r * n + t * 16 + 8, a1);
            }
        }
    });
}

// A few input rows (a batched decode step): the inputs transposed once into columns of
// rows ([k][rows rounded up to 8], zeros past the last), then per tile of 4 weight rows,
// each widened once into L1 (no transposes), 16 input rows a pass: each column 4 weight
// broadcasts, 2 input loads and 8 FMAs into 8 accumulators (4 outputs x 16 rows).
template <class B>
void gemm_few(const uint8_t* w, int64_t n, int64_t k, const float* x, int64_t rows, float* y) {
    const int64_t blocks = k / 32, row_bytes = B::row_bytes(k), padded = (rows + 7) / 8 * 8;
    std::vector<float> columns(k * padded, 0.0f);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < k; ++c) columns[c * padded + r] = x[r * k + c];
    const float* xt = columns.data();
    at::parallel_for(0, (n + 3) / 4, 2, [&](int64_t begin, int64_t end) {
        std::vector<float> wide(4 * k, 0.0f);
        alignas(32) float sums[4][16];
        for (int64_t t = begin; t < end; ++t) {
            const int64_t o = t * 4, outs = std::min<int64_t>(4, n - o);
            for (int64_t j = 0; j < outs; ++j)
                widen_row<B>(w + (o + j) * row_bytes, blocks, wide.data() + j * k);
            for (int64_t r = 0; r < padded; r += 16) {
                const bool two = r + 16 <= padded;  // else 8 rows left
                __m256 a[4][2];
                for (int j = 0; j < 4; ++j) a[j][0] = a[j][1] = _mm256_setzero_ps();
                const float* col = xt + r;
                for (int64_t c = 0; c < k; ++c, col += padded) {
                    const __m256 x0 = _mm256_loadu_ps(col);
                    const __m256 x1 = two ? _mm256_loadu_ps(col + 8) : x0;
                    for (int j = 0; j < 4; ++j) {
                        const __m256 wv = _mm256_broadcast_ss(&wide[j * k + c]);
                        a[j][0] = _mm256_fmadd_ps(wv, x0, a[j][0]);
                        a[j][1] = _mm256_fmadd_ps(wv, x1, a[j][1]);
                    }
                }
                for (int j = 0; j < 4; ++j) {
                    _mm256_store_ps(sums[j], a[j][0]);
                    _mm256_store_ps(sums[j] + 8, a[j][1]);
                }
                const int64_t last = std::min<int64_t>(r + (two ? 16 : 8), rows);
                for (int64_t i = r; i < last; ++i)
                    for (int64_t j = 0; j < outs; ++j) y[i * n + o + j] = sums[j][i - r];
            }
        }
    });
}

template <class B>
void lookup(const uint8_t* w, int64_t k, const int64_t* ids, int64_t count, float* out) {
    const int64_t blocks = k / 32;
    at::parallel_for(0, count, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
            widen_row<B>(w + ids[i] * B::row_bytes(k), blocks, out + i * k);
    });
}

template <class F>
void dispatch(int64_t qtype, F&& body) {
    switch (qtype) {
        case kQ4_0: body(Flat<Q4_0>{}); return;
        case kQ4_1: body(Flat<Q4_1>{}); return;
        case kQ8_0: body(Flat<Q8_0>{}); return;
        case kQ4_K: body(Q4_K{}); return;
        case kQ6_K: body(Q6_K{}); return;
    }
    TORCH_CHECK(false, "gguf_cpu: quantization type ", qtype,
                " is not Q4_0, Q4_1, Q8_0, Q4_K or Q6_K");
}

void check_weight(const torch::Tensor& w, int64_t k, int64_t qtype) {
    TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kUInt8 && w.is_contiguous(),
                "gguf_cpu: weight must be contiguous uint8 [rows, row bytes]");
    const int64_t group = qtype == kQ4_K || qtype == kQ6_K ? 256 : 32;  // values a block
    int64_t row_bytes = 0;
    dispatch(qtype, [&](auto b) { row_bytes = decltype(b)::row_bytes(k); });
    TORCH_CHECK(k % group == 0 && w.size(1) == row_bytes,
                "gguf_cpu: ", k, " input columns do not match rows of ", w.size(1), " bytes");
}

}  // namespace

// x [rows, k] float32 (contiguous) times the weight's transpose: [rows, n] float32.
torch::Tensor gguf_linear(torch::Tensor w, int64_t qtype, torch::Tensor x) {
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
                "gguf_cpu: input must be contiguous float32 [rows, k]");
    const int64_t rows = x.size(0), k = x.size(1), n = w.size(0);
    check_weight(w, k, qtype);
    auto y = torch::empty({rows, n}, x.options());
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    dispatch(qtype, [&](auto b) {
        using B = decltype(b);
        if (rows <= kGemvRows) {  // a few rows: each by the memory-bound gemv
            for (int64_t r = 0; r < rows; ++r) gemv<B>(wp, n, k, xp + r * k, yp + r * n);
        } else if (rows <= kFewRows) {
            gemm_few<B>(wp, n, k, xp, rows, yp);
        } else {
            gemm<B>(wp, n, k, xp, rows, yp);
        }
    });
    return y;
}

// The rows ``ids`` of the weight, dequantized: [len(ids), k] float32 (an embedding lookup,
// or the whole table with ids = arange).
torch::Tensor gguf_rows(torch::Tensor w, int64_t qtype, int64_t k, torch::Tensor ids) {
    check_weight(w, k, qtype);
    TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == torch::kInt64 && ids.is_contiguous(),
                "gguf_cpu: ids must be contiguous int64 [count]");
    const int64_t count = ids.size(0), n = w.size(0);
    const int64_t* ip = ids.data_ptr<int64_t>();
    for (int64_t i = 0; i < count; ++i)
        TORCH_CHECK(ip[i] >= 0 && ip[i] < n, "gguf_cpu: row ", ip[i], " is outside [0, ", n, ")");
    auto out = torch::empty({count, k}, torch::dtype(torch::kFloat32));
    dispatch(qtype, [&](auto b) {
        lookup<decltype(b)>(w.data_ptr<uint8_t>(), k, ip, count, out.data_ptr<float>());
    });
    return out;
}
