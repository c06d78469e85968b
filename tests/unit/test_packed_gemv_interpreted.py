"""The packed FP8 GEMV (``kernels/fp8_packed_gemv.py``) on the CPU, under Triton's
interpreter in a subprocess: its float16 pairs, each K slice's power-of-two scale (an
outlier activation that would overflow float16 unscaled), bias, the gated input, ragged
column strips, every K tile; the small-batch products route one row to it; what it does not
take is refused by name. The interpreter runs no PTX: the kernel's interpreted path takes
the same steps with each rounded to float16 as the packed instructions round them
(tests/gpu/test_fp8.py runs the PTX)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.kernels import fp8_packed_gemv, fp8_w8a8_matmul
    from pagedllm.kernels.fp8_packed_gemv import config_for, packed_gemv
    from pagedllm.kernels.fused_ops import silu_and_mul
    from pagedllm.model.layers.fp8 import quantize_weight
    from tests.unit.interpreted import assert_refused

    gen = torch.Generator().manual_seed(3)
    cases = [  # n, k, dtype, gated, bias, config
        (40, 512, torch.float16, False, False, (16, 256, 4, 3)),
        (70, 1024, torch.bfloat16, False, True, (8, 512, 4, 3)),  # a ragged last strip
        (36, 192, torch.float16, True, True, None),  # K tile 64 (the tuned choice)
        (24, 2048, torch.bfloat16, True, False, (4, 2048, 4, 3)),
    ]
    for n, k, dtype, gated, has_bias, config in cases:
        q, scale = quantize_weight(torch.randn(n, k, generator=gen))
        x = torch.randn(1, 2 * k if gated else k, generator=gen).to(dtype)
        x[0, 3] = 900.0  # x 448 overflows float16 unless its slice is scaled down
        bias = torch.randn(n, generator=gen).to(dtype) if has_bias else None
        inner = silu_and_mul(x) if gated else x
        want = inner.double() @ (q.double() * scale.double()[:, None]).t()
        if bias is not None:
            want += bias.double()
        got = packed_gemv(x, q, scale, bias, gated, config).double()
        assert torch.isfinite(got).all(), (n, k, dtype, gated)
        error = ((got - want).norm() / want.norm()).item()
        # float16 products (11 bits), then the output's rounding (bfloat16: 8 bits)
        assert error < (2e-3 if dtype == torch.float16 else 8e-3), (n, k, dtype, gated, error)
        # the small-batch products send this row here (gated: with no activation kernel)
        if gated:
            unfused = fp8_w8a8_matmul.fused_ops.silu_and_mul
            fp8_w8a8_matmul.fused_ops.silu_and_mul = None  # calling it would raise
            routed = fp8_w8a8_matmul.small_batch_gated_matmul(x, q, scale, bias)
            fp8_w8a8_matmul.fused_ops.silu_and_mul = unfused
        else:
            routed = fp8_w8a8_matmul.small_batch_matmul(x, q, scale, bias)
        assert torch.equal(routed, packed_gemv(x, q, scale, bias, gated)), (n, k, gated)

    # the range at its edge: every weight 448 and every activation just under a power of two,
    # so each group's four products sum to just under 4 x 448 x 32 = 57,344 (float16 holds
    # 65,504: a scale one power of two short would overflow here)
    q, scale = quantize_weight(torch.ones(8, 256))
    assert (q.float() == 448).all()
    for value in (15.92, -0.0312, 1.99e4):
        x = torch.full((1, 256), value).to(torch.bfloat16)  # outputs past float16's range
        got = packed_gemv(x, q, scale).double()
        want = x.double() @ (q.double() * scale.double()[:, None]).t()
        assert torch.isfinite(got).all(), value
        assert ((got - want).abs() / want.abs()).max().item() < 8e-3, value

    assert config_for(6144, 4096) == (8, 2048, 4, 3)  # the longest K tile that divides
    assert config_for(4096, 14336) == (8, 2048, 4, 3)
    assert config_for(28672, 4096) == (16, 512, 4, 3)  # tall: short K tiles, wider strips
    assert config_for(28672, 4160) == (8, 64, 4, 3)  # no 512 tile divides 4,160
    q, scale = quantize_weight(torch.randn(16, 100, generator=gen))
    x = torch.randn(1, 100).half()
    assert not fp8_packed_gemv.supported(x, q)  # no tile divides K = 100
    flat = quantize_weight(torch.randn(1, 16 * 128 + 1, generator=gen))[0].view(-1)
    shifted = flat[1:].view(16, 128)  # contiguous, but not on a 4-byte boundary
    assert not fp8_packed_gemv.supported(torch.randn(1, 128).half(), shifted)
    assert fp8_packed_gemv.supported(torch.randn(1, 128).half(), flat[:-1].view(16, 128))
    assert_refused(lambda: packed_gemv(x, q, scale), "packed_gemv")
    q, scale = quantize_weight(torch.randn(16, 128, generator=gen))
    assert_refused(lambda: packed_gemv(torch.randn(2, 128).half(), q, scale), "packed_gemv")
    assert_refused(lambda: packed_gemv(torch.randn(1, 128), q, scale), "float32")
    assert_refused(lambda: packed_gemv(torch.randn(1, 128).half(), q, scale, None, True), "gated")
    assert_refused(
        lambda: packed_gemv(torch.randn(1, 128).half(), q, scale, None, False, (8, 256, 4, 3)),
        "does not divide",
    )
    print("PACKED_OK")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernel")
def test_packed_gemv_under_the_interpreter() -> None:
    run_interpreted(CHECK, "PACKED_OK", timeout=300)
