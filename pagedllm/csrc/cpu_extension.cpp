// The Python bindings of pagedllm's C++ CPU kernels (pagedllm/kernels/cpu_extension.py).
#include "cpu_kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("gguf_linear", &gguf_linear, "x W^T on GGUF blocks as stored");
    m.def("gguf_rows", &gguf_rows, "rows of GGUF blocks, dequantized");
    m.def("rms_norm", &rms_norm, "RMSNorm of float32 rows");
    m.def("add_rms_norm", &add_rms_norm, "RMSNorm(x + residual), and x + residual");
    m.def("paged_decode", &paged_decode, "one query token per sequence over its paged KV");
    bind_decode_layer(m);
}
