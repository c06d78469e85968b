// One decoder layer of a decode step on the CPU, in C++ from its input to its output: the
// layer's Python code (a dozen modules and small ops, ~0.15 ms a layer) is what bounds a
// single stream once the products read 4-bit weights. Linear layers on GGUF blocks as
// stored (gguf_cpu.cpp; runs of rows of several types), float32 activations, one query
// token per sequence. The same arithmetic as the layer's modules: RMSNorm (with the residual added first), q/k/v, rotary
// embedding (the two halves of each head), K and V written to their slots, paged decode
// attention, o, RMSNorm, gate/up, silu(gate) * up, down.
#include <cstring>
#include <optional>

#include "cpu_kernels.h"

namespace {

// Runs of output rows, each on blocks of one type (one run, or several where the layer's
// shards differ: a Q4_K_M file's v in Q6_K beside q and k in Q4_K).
struct BlockLinear {
    std::vector<torch::Tensor> weights;  // uint8 [run rows, row bytes] each
    std::vector<int64_t> qtypes;
    std::optional<torch::Tensor> bias;  // float32 [out]

    torch::Tensor operator()(const torch::Tensor& x) const {
        torch::Tensor y;
        if (weights.size() == 1) {
            y = gguf_linear(weights[0], qtypes[0], x);
        } else {
            std::vector<torch::Tensor> runs;
            for (size_t i = 0; i < weights.size(); ++i)
                runs.push_back(gguf_linear(weights[i], qtypes[i], x));
            y = torch::cat(runs, 1);
        }
        if (bias) y.add_(*bias);
        return y;
    }
};

// The rotary embedding in place on the first ``heads`` heads of each token's row:
// (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), cos and sin [tokens, head_dim / 2].
void rotate(float* qkv, int64_t tokens, int64_t row, int64_t heads, int64_t d,
            const float* cos, const float* sin) {
    const int64_t half = d / 2;
    for (int64_t t = 0; t < tokens; ++t) {
        const float *c = cos + t * half, *s = sin + t * half;
        for (int64_t h = 0; h < heads; ++h) {
            float* x = qkv + t * row + h * d;
            for (int64_t i = 0; i < half; ++i) {
                const float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * c[i] - x2 * s[i];
                x[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

}  // namespace

class DecodeLayer {
  public:
    DecodeLayer(torch::Tensor input_norm, torch::Tensor post_norm, double eps,
                std::vector<std::vector<torch::Tensor>> weights,
                std::vector<std::vector<int64_t>> qtypes,
                std::vector<std::optional<torch::Tensor>> biases, int64_t heads,
                int64_t kv_heads, int64_t head_dim, double scale, int64_t window)
        : input_norm_(input_norm), post_norm_(post_norm), eps_(eps), heads_(heads),
          kv_heads_(kv_heads), d_(head_dim), scale_(scale), window_(window) {
        TORCH_CHECK(weights.size() == 4 && qtypes.size() == 4 && biases.size() == 4,
                    "DecodeLayer: qkv, o, gate_up and down");
        for (int i = 0; i < 4; ++i) {
            TORCH_CHECK(!weights[i].empty() && weights[i].size() == qtypes[i].size(),
                        "DecodeLayer: one type per run of rows");
            linears_[i] = BlockLinear{weights[i], qtypes[i], biases[i]};
        }
    }

    // x [tokens, hidden] float32; residual None for the first layer. Returns (out, residual).
    std::vector<torch::Tensor> forward(torch::Tensor x, std::optional<torch::Tensor> residual,
                                       torch::Tensor kv_cache, torch::Tensor slots,
                                       torch::Tensor block_table, torch::Tensor seq_lens,
                                       torch::Tensor cos, torch::Tensor sin) const {
        torch::Tensor h, res;
        if (residual) {
            auto normed = add_rms_norm(x, *residual, input_norm_, eps_);
            h = normed[0];
            res = normed[1];
        } else {
            h = rms_norm(x, input_norm_, eps_);
            res = x;
        }
        const int64_t tokens = x.size(0), row = (heads_ + 2 * kv_heads_) * d_;
        auto qkv = linears_[0](h);
        TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == tokens
                        && cos.size(1) == d_ / 2 && sin.sizes() == cos.sizes()
                        && cos.scalar_type() == torch::kFloat32,
                    "DecodeLayer: cos and sin must be contiguous float32 [tokens, head_dim / 2]");
        rotate(qkv.data_ptr<float>(), tokens, row, heads_ + kv_heads_, d_,
               cos.data_ptr<float>(), sin.data_ptr<float>());
        write_kv(qkv, kv_cache, slots);
        auto q = qkv.narrow(1, 0, heads_ * d_).contiguous().view({tokens, heads_, d_});
        auto attended = paged_decode(q, kv_cache, block_table, seq_lens, scale_, window_);
        auto o = linears_[1](attended.view({tokens, heads_ * d_}));
        auto normed = add_rms_norm(o, res, post_norm_, eps_);
        auto gate_up = linears_[2](normed[0]);
        auto halves = gate_up.chunk(2, 1);
        auto act = (at::silu(halves[0]) * halves[1]).contiguous();
        return {linears_[3](act), normed[1]};
    }

  private:
    void write_kv(const torch::Tensor& qkv, const torch::Tensor& kv_cache,
                  const torch::Tensor& slots) const {
        TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.is_contiguous()
                        && kv_cache.scalar_type() == torch::kFloat32 && kv_cache.size(3) == kv_heads_
                        && kv_cache.size(4) == d_,
                    "DecodeLayer: kv_cache must be contiguous float32 [2, blocks, block_size, "
                    "kv_heads, head_dim]");
        TORCH_CHECK(slots.dim() == 1 && slots.size(0) == qkv.size(0) && slots.is_contiguous()
                        && slots.scalar_type() == torch::kInt64,
                    "DecodeLayer: slots must be contiguous int64 [tokens]");
        const int64_t span = kv_heads_ * d_, row = (heads_ + 2 * kv_heads_) * d_;
        const int64_t num_slots = kv_cache.size(1) * kv_cache.size(2);
        float* keys = kv_cache.data_ptr<float>();
        float* values = keys + num_slots * span;
        const float* src = qkv.data_ptr<float>();
        const int64_t* sp = slots.data_ptr<int64_t>();
        for (int64_t t = 0; t < qkv.size(0); ++t) {
            TORCH_CHECK(sp[t] >= 0 && sp[t] < num_slots, "DecodeLayer: slot outside the cache");
            std::memcpy(keys + sp[t] * span, src + t * row + heads_ * d_, span * sizeof(float));
            std::memcpy(values + sp[t] * span, src + t * row + (heads_ + kv_heads_) * d_,
                        span * sizeof(float));
        }
    }

    torch::Tensor input_norm_, post_norm_;
    double eps_;
    BlockLinear linears_[4];
    int64_t heads_, kv_heads_, d_;
    double scale_;
    int64_t window_;
};

void bind_decode_layer(pybind11::module& m) {
    pybind11::class_<DecodeLayer>(m, "DecodeLayer")
        .def(pybind11::init<torch::Tensor, torch::Tensor, double,
                            std::vector<std::vector<torch::Tensor>>,
                            std::vector<std::vector<int64_t>>,
                            std::vector<std::optional<torch::Tensor>>, int64_t, int64_t, int64_t,
                            double, int64_t>())
        .def("forward", &DecodeLayer::forward);
}
