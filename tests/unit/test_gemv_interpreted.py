"""The one-row GEMV kernel on 16-bit weights (``kernels/gemv``), under Triton's interpreter
in a subprocess: plain and gated inputs (silu(gate) * up applied as the kernel loads them),
split-K partial sums, ragged K, bias, and the dispatch that sends one row of a preferred
shape to it."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from pagedllm.kernels import gemv
    from pagedllm.model.layers import cuda_ops
    from tests.unit.interpreted import assert_refused

    gen = torch.Generator().manual_seed(3)
    for n, k, config, has_bias in [
        (40, 256, (8, 64, 4, 2, 1), False),
        (24, 200, (8, 64, 4, 2, 2), True),  # split K, ragged
        (16, 512, (16, 128, 4, 2, 1, 1, 1), True),  # each tile summed at once
    ]:
        w = (torch.randn(n, k, generator=gen) * 0.1).half()
        bias = torch.randn(n, generator=gen).half() if has_bias else None
        gate_up = torch.randn(1, 2 * k, generator=gen).half()
        for gated in (False, True):
            x = gate_up if gated else gate_up[:, :k]
            act = (F.silu(x[:, :k].float()) * x[:, k:].float()).half() if gated else x
            want = act.float() @ w.float().t() + (bias.float() if has_bias else 0)
            y = torch.empty(1, n, dtype=torch.float16)
            gemv.gemv(x, w, None, bias, y, config, gated)
            error = ((y.float() - want).norm() / want.norm()).item()
            assert error < 2e-3, (n, k, config, gated, error)

    # one row of a preferred shape takes the kernel, with its gated form; more rows cuBLAS
    w = (torch.randn(64, 4096, generator=gen) * 0.02).half()
    gate_up = torch.randn(1, 8192, generator=gen).half()
    assert gemv.dense_preferred(64, 4096, gated=True) and gemv.dense_preferred(28672, 4096)
    assert not gemv.dense_preferred(128256, 4096) and not gemv.dense_preferred(4096, 14336, True)
    got = cuda_ops.gated_linear(gate_up, w, None).float()
    want = F.linear(cuda_ops.silu_and_mul(gate_up).float(), w.float())
    assert ((got - want).norm() / want.norm()).item() < 2e-3
    got = cuda_ops.linear(gate_up[:, :4096], w, None).float()
    want = F.linear(gate_up[:, :4096].float(), w.float())
    assert ((got - want).norm() / want.norm()).item() < 2e-3
    assert_refused(lambda: gemv.dense_linear(gate_up[:, :-2], w, None, gated=True), "dense_linear")
    print("GEMV_OK")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernel")
def test_dense_gemv_under_the_interpreter() -> None:
    run_interpreted(CHECK, "GEMV_OK", timeout=300)
