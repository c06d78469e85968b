"""The packed FP8 GEMV (``kernels/fp8_packed_gemv.py``) on the CPU, under Triton's
interpreter in a subprocess: its float16 pairs, each K slice's power-of-two scale (an
outlier activation that would overflow float16 unscaled), bias, the gated input, ragged
column strips, every K tile, RMSNorm(x + residual) computed inside; the small-batch products
route one row to it; what it does not take is refused by name. The interpreter runs no PTX:
the kernel's interpreted path takes the same steps with each rounded to float16 as the
packed instructions round them (tests/gpu/test_fp8.py runs the PTX)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.kernels import fp8_packed_gemv, fp8_w8a8_matmul
    from pagedllm.kernels.fp8_packed_gemv import config_for, packed_gemv, packed_normed_gemv
    from pagedllm.kernels.fused_ops import rms_norm, silu_and_mul
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

    # RMSNorm(x + residual) inside the product: the norm kernel's values, then the product
    for n, k, dtype, with_residual in [(40, 512, torch.float16, True),
                                       (24, 1024, torch.bfloat16, True),
                                       (36, 192, torch.float16, False)]:  # fmt: skip
        q, scale = quantize_weight(torch.randn(n, k, generator=gen))
        x = torch.randn(1, k, generator=gen).to(dtype)
        residual = (torch.randn(1, k, generator=gen) * 8).to(dtype) if with_residual else None
        norm_weight = torch.rand(k, generator=gen).to(dtype) + 0.5
        bias = torch.randn(n, generator=gen).to(dtype)
        normed, summed = rms_norm(x, norm_weight, 1e-5, residual)
        y, next_residual = packed_normed_gemv(x, residual, norm_weight, 1e-5, q, scale, bias)
        want = packed_gemv(normed, q, scale, bias).double()
        error = ((y.double() - want).norm() / want.norm()).item()
        assert error < 2e-3, (n, k, dtype, with_residual, error)  # the rms' last bit at most
        if with_residual:
            assert torch.equal(next_residual, summed)
        else:
            assert next_residual is x
        # the small-batch product takes it for one row, the norm kernel first for more
        routed = fp8_w8a8_matmul.small_batch_normed_matmul(
            x, residual, norm_weight, 1e-5, q, scale, bias
        )
        assert torch.equal(routed[0], y) and torch.equal(routed[1], next_residual)
        two = torch.cat([x, x])
        res2 = None if residual is None else torch.cat([residual, residual])
        y2, summed2 = fp8_w8a8_matmul.small_batch_normed_matmul(
            two, res2, norm_weight, 1e-5, q, scale, bias
        )
        normed2, _ = rms_norm(two, norm_weight, 1e-5, res2)
        assert torch.equal(y2, fp8_w8a8_matmul.small_batch_matmul(normed2, q, scale, bias))
        assert torch.equal(summed2, two if res2 is None else torch.cat([summed, summed]))
    q, scale = quantize_weight(torch.randn(16, 128, generator=gen))
    x = torch.randn(1, 128).half()
    assert_refused(
        lambda: packed_normed_gemv(x, torch.randn(1, 128), torch.ones(128).half(), 1e-5, q, scale),
        "residual",
    )

    assert config_for(6144, 4096) == (4, 2048, 4, 3)  # taller than wide: narrow strips
    assert config_for(4096, 14336) == (16, 2048, 4, 3)  # long K
    assert config_for(28672, 4096)[0] == 8 and config_for(4096, 4096)[0] == 8
    q, scale = quantize_weight(torch.randn(16, 100, generator=gen))
    x = torch.randn(1, 100).half()
    assert not fp8_packed_gemv.supported(x, q)  # no tile divides K = 100
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
