"""The one-row GEMV on 16-bit weights against cuBLAS, plain and gated, eager and replayed
from a CUDA graph (its dependent launches captured)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.kernels.fused_ops import silu_and_mul
from pagedllm.kernels.gemv import dense_linear


@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (4096, 14336), (100, 4100)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dense_gemv_is_the_product(n, k, dtype):
    gen = torch.Generator(device="cuda").manual_seed(n + k)
    w = (torch.randn(n, k, generator=gen, device="cuda") * 0.02).to(dtype)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    gate_up = torch.randn(1, 2 * k, generator=gen, device="cuda").to(dtype)
    for gated in (False, True):
        x = gate_up if gated else gate_up[:, :k]
        act = silu_and_mul(gate_up) if gated else x
        want = F.linear(act.float(), w.float(), bias.float())
        got = dense_linear(x, w, bias, gated).float()
        # float32 sums both ways; the output's rounding to 16 bits is what differs
        assert ((got - want).norm() / want.norm()).item() < 4e-3
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = dense_linear(x, w, bias, gated)
        for _ in range(2):
            graph.replay()
            assert torch.equal(out, dense_linear(x, w, bias, gated))
