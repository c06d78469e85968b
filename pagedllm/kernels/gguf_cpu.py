"""GGUF's quantized blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) used as stored on the CPU: products
(``linear``) and row lookups (``rows``) by the C++ kernels of ``pagedllm/csrc/gguf_cpu.cpp``
(built by ``cpu_extension``).

Invariants: a weight is a contiguous uint8 tensor [rows, row bytes], each row whole blocks
of one type (``STORED_TYPES``); inputs may be any float dtype, results are float32.
"""

from __future__ import annotations

import torch

from pagedllm.kernels import cpu_extension

# The GGMLQuantizationType values the kernels take: Q4_0, Q4_1, Q8_0 (blocks of 32 values),
# Q4_K, Q6_K (super-blocks of 256).
STORED_TYPES = frozenset({2, 3, 8, 12, 14})


def linear(weight: torch.Tensor, qtype: int, x: torch.Tensor) -> torch.Tensor:
    """``x W^T`` for x [rows, in] (computed in float32): [rows, out] float32."""
    return cpu_extension.module().gguf_linear(weight, qtype, x.float().contiguous())


def rows(weight: torch.Tensor, qtype: int, in_features: int, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (int64 [count]) of the weight, dequantized: [count, in_features] float32."""
    return cpu_extension.module().gguf_rows(weight, qtype, in_features, ids.contiguous())
