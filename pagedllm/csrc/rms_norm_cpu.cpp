// RMSNorm on the CPU in one pass over each row, float32: y = x * rsqrt(mean(x^2) + eps) * w,
// and the residual form that first adds the residual (returning the sum too, the next
// residual). Rows of h values, h a multiple of 8; the sum of squares in float32.
#include <ATen/Parallel.h>

#include <cmath>

#include "cpu_kernels.h"

namespace {

void check(const torch::Tensor& x, const torch::Tensor& weight) {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat32,
                "rms_norm: x must be contiguous float32 [rows, h]");
    TORCH_CHECK(weight.dim() == 1 && weight.is_contiguous() && weight.size(0) == x.size(1)
                    && weight.scalar_type() == torch::kFloat32 && x.size(1) % 8 == 0,
                "rms_norm: weight must be contiguous float32 [h], h a multiple of 8");
}

// out = row * rsqrt(mean(row^2) + eps) * w, row already in place (the sum, or x itself).
inline void scale_row(const float* row, const float* w, int64_t h, float eps, float* out) {
    __m256 squares = _mm256_setzero_ps();
    for (int64_t c = 0; c < h; c += 8) {
        const __m256 v = _mm256_loadu_ps(row + c);
        squares = _mm256_fmadd_ps(v, v, squares);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(hsum(squares) / h + eps));
    for (int64_t c = 0; c < h; c += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(row + c), inv);
        _mm256_storeu_ps(out + c, _mm256_mul_ps(v, _mm256_loadu_ps(w + c)));
    }
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
    check(x, weight);
    auto out = torch::empty_like(x);
    const int64_t h = x.size(1);
    const float* xp = x.data_ptr<float>();
    const float* wp = weight.data_ptr<float>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, x.size(0), 32, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) scale_row(xp + r * h, wp, h, eps, op + r * h);
    });
    return out;
}

std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual,
                                        torch::Tensor weight, double eps) {
    check(x, weight);
    TORCH_CHECK(residual.sizes() == x.sizes() && residual.is_contiguous()
                    && residual.scalar_type() == torch::kFloat32,
                "add_rms_norm: residual must be contiguous float32 like x");
    auto summed = torch::empty_like(x), out = torch::empty_like(x);
    const int64_t h = x.size(1);
    const float *xp = x.data_ptr<float>(), *rp = residual.data_ptr<float>();
    const float* wp = weight.data_ptr<float>();
    float *sp = summed.data_ptr<float>(), *op = out.data_ptr<float>();
    at::parallel_for(0, x.size(0), 32, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            for (int64_t c = 0; c < h; c += 8)
                _mm256_storeu_ps(sp + r * h + c, _mm256_add_ps(_mm256_loadu_ps(xp + r * h + c),
                                                               _mm256_loadu_ps(rp + r * h + c)));
            scale_row(sp + r * h, wp, h, eps, op + r * h);
        }
    });
    return {out, summed};
}
