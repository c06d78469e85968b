// Decode attention on the CPU: one query token per sequence against its keys and values
// read in place from the paged KV cache (no gather into a padded copy), all query heads
// that share a KV head in one pass over it, softmax computed online. Sums in float32.
//
//   q          [n, heads, head_dim]                          float32, float16 or bfloat16
//   kv_cache   [2, blocks, block_size, kv_heads, head_dim]  q's dtype (index 0 = K, 1 = V)
//   block_table [n, max_blocks] int64; seq_lens [n] int64 (token t of sequence i lives in
//              block block_table[i][t / block_size], row t % block_size)
//   window     > 0: only the last ``window`` keys (sliding window); else all
// Returns [n, heads, head_dim] float32. Query heads h * group ... h * group + group - 1 share
// KV head h (group = heads / kv_heads).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_kernels.h"

namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const at::BFloat16* p) {  // bfloat16 is float32's upper half
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// Keys and values are read a block's run of tokens at a time: each key row is loaded once
// for every query head of the group (independent dot products), the run's maximum rescales
// the sums once, then each value row is loaded once and added with every head's weight.
constexpr int64_t kMaxGroup = 16, kMaxRun = 64;

template <class T>
void decode(const torch::Tensor& q, const torch::Tensor& kv_cache, const int64_t* table,
            int64_t max_blocks, const int64_t* seq_lens, float scale, int64_t window,
            float* out) {
    const int64_t n = q.size(0), heads = q.size(1), d = q.size(2);
    const int64_t blocks = kv_cache.size(1), block_size = kv_cache.size(2);
    const int64_t kv_heads = kv_cache.size(3), group = heads / kv_heads;
    const T* qp = q.data_ptr<T>();
    const T* keys = kv_cache.data_ptr<T>();
    const T* values = keys + blocks * block_size * kv_heads * d;
    const int64_t row = kv_heads * d;  // one token's K (or V) across heads
    at::parallel_for(0, n * kv_heads, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> query(group * d), acc(group * d);
        float top[kMaxGroup], total[kMaxGroup], weights[kMaxGroup][kMaxRun];
        for (int64_t task = begin; task < end; ++task) {
            const int64_t i = task / kv_heads, h = task % kv_heads;
            const int64_t len = seq_lens[i];
            const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
            for (int64_t g = 0; g < group; ++g) {
                const T* src = qp + (i * heads + h * group + g) * d;
                for (int64_t c = 0; c < d; c += 8)
                    _mm256_storeu_ps(&query[g * d + c], _mm256_mul_ps(load8(src + c),
                                                                      _mm256_set1_ps(scale)));
                top[g] = -std::numeric_limits<float>::infinity();
                total[g] = 0.0f;
            }
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int64_t t = first; t < len;) {
                const int64_t offset = t % block_size;
                const int64_t run = std::min({block_size - offset, len - t, kMaxRun});
                const int64_t slot = table[i * max_blocks + t / block_size] * block_size + offset;
                const T* k0 = keys + slot * row + h * d;
                const T* v0 = values + slot * row + h * d;
                for (int64_t j = 0; j < run; ++j) {  // scores
                    const T* k = k0 + j * row;
                    for (int64_t g = 0; g < group; ++g) {
                        const float* qg = &query[g * d];
                        __m256 s = _mm256_setzero_ps();
                        for (int64_t c = 0; c < d; c += 8)
                            s = _mm256_fmadd_ps(_mm256_loadu_ps(qg + c), load8(k + c), s);
                        weights[g][j] = hsum(s);
                    }
                }
                for (int64_t g = 0; g < group; ++g) {  // softmax weights, sums rescaled once
                    float peak = top[g];
                    for (int64_t j = 0; j < run; ++j) peak = std::max(peak, weights[g][j]);
                    if (peak > top[g]) {
                        const float shrink = std::exp(top[g] - peak);
                        total[g] *= shrink;
                        const __m256 f = _mm256_set1_ps(shrink);
                        float* a = &acc[g * d];
                        for (int64_t c = 0; c < d; c += 8)
                            _mm256_storeu_ps(a + c, _mm256_mul_ps(_mm256_loadu_ps(a + c), f));
                        top[g] = peak;
                    }
                    for (int64_t j = 0; j < run; ++j) {
                        weights[g][j] = std::exp(weights[g][j] - peak);
                        total[g] += weights[g][j];
                    }
                }
                for (int64_t j = 0; j < run; ++j) {  // weighted values
                    const T* v = v0 + j * row;
                    for (int64_t c = 0; c < d; c += 8) {
                        const __m256 vc = load8(v + c);
                        for (int64_t g = 0; g < group; ++g) {
                            float* a = &acc[g * d + c];
                            _mm256_storeu_ps(a, _mm256_fmadd_ps(_mm256_set1_ps(weights[g][j]), vc,
                                                                _mm256_loadu_ps(a)));
                        }
                    }
                }
                t += run;
            }
            for (int64_t g = 0; g < group; ++g) {
                float* dst = out + (i * heads + h * group + g) * d;
                const __m256 inv = _mm256_set1_ps(total[g] > 0 ? 1.0f / total[g] : 0.0f);
                for (int64_t c = 0; c < d; c += 8)
                    _mm256_storeu_ps(dst + c, _mm256_mul_ps(_mm256_loadu_ps(&acc[g * d + c]), inv));
            }
        }
    });
}

}  // namespace

torch::Tensor paged_decode(torch::Tensor q, torch::Tensor kv_cache, torch::Tensor block_table,
                           torch::Tensor seq_lens, double scale, int64_t window) {
    TORCH_CHECK(q.dim() == 3 && q.is_contiguous(), "paged_decode: q must be contiguous [n, heads, d]");
    TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.is_contiguous(),
                "paged_decode: kv_cache must be contiguous [2, blocks, block_size, kv_heads, d]");
    TORCH_CHECK(kv_cache.scalar_type() == q.scalar_type(), "paged_decode: q and cache dtypes differ");
    const int64_t n = q.size(0), heads = q.size(1), d = q.size(2), kv_heads = kv_cache.size(3);
    TORCH_CHECK(kv_cache.size(4) == d && d % 8 == 0 && heads % kv_heads == 0
                    && heads / kv_heads <= kMaxGroup,
                "paged_decode: head sizes (at most 16 query heads per KV head)");
    TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == n && block_table.is_contiguous()
                    && block_table.scalar_type() == torch::kInt64,
                "paged_decode: block_table must be contiguous int64 [n, max_blocks]");
    TORCH_CHECK(seq_lens.dim() == 1 && seq_lens.size(0) == n && seq_lens.is_contiguous()
                    && seq_lens.scalar_type() == torch::kInt64,
                "paged_decode: seq_lens must be contiguous int64 [n]");
    const int64_t max_blocks = block_table.size(1), block_size = kv_cache.size(2);
    const int64_t* table = block_table.data_ptr<int64_t>();
    const int64_t* lens = seq_lens.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {  // every block read must be one of the cache's
        TORCH_CHECK(lens[i] >= 0 && lens[i] <= max_blocks * block_size, "paged_decode: seq_lens");
        for (int64_t b = 0; b < (lens[i] + block_size - 1) / block_size; ++b)
            TORCH_CHECK(table[i * max_blocks + b] >= 0 && table[i * max_blocks + b] < kv_cache.size(1),
                        "paged_decode: block id outside the cache");
    }
    auto out = torch::empty({n, heads, d}, q.options().dtype(torch::kFloat32));
    const float s = static_cast<float>(scale);
    float* op = out.data_ptr<float>();
    switch (q.scalar_type()) {
        case torch::kFloat32: decode<float>(q, kv_cache, table, max_blocks, lens, s, window, op); break;
        case torch::kHalf: decode<at::Half>(q, kv_cache, table, max_blocks, lens, s, window, op); break;
        case torch::kBFloat16:
            decode<at::BFloat16>(q, kv_cache, table, max_blocks, lens, s, window, op);
            break;
        default: TORCH_CHECK(false, "paged_decode: dtype ", q.scalar_type(), " is not supported");
    }
    return out;
}
