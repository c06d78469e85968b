// Declarations shared by pagedllm's C++ CPU kernels (pagedllm/csrc/*.cpp, one extension).
#pragma once

#include <torch/extension.h>
#include <immintrin.h>

inline float hsum(__m256 v) {  // the sum of the 8 lanes
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

torch::Tensor gguf_linear(torch::Tensor w, int64_t qtype, torch::Tensor x);
torch::Tensor gguf_rows(torch::Tensor w, int64_t qtype, int64_t k, torch::Tensor ids);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual,
                                        torch::Tensor weight, double eps);
torch::Tensor paged_decode(torch::Tensor q, torch::Tensor kv_cache, torch::Tensor block_table,
                           torch::Tensor seq_lens, double scale, int64_t window);
void bind_decode_layer(pybind11::module& m);
