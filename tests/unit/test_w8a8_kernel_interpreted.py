"""The W8A8 decode kernel's code paths on the CPU, under Triton's interpreter in a
subprocess: split-K sums finished by a strip's last program (and its counters left at zero
for the next call), one row quantized alone, ragged K, masked rows and columns, bias. The
activations are built so that quantizing them is exact (each slice of BLOCK_K holds a
+-448 x 2^e and otherwise e4m3 values times the same 2^e): the interpreter's float32 ->
e4m3 conversion mis-rounds values that round up across a power of two, which the compiled
kernel does not (tests/gpu/test_fp8.py checks rounding against the reference on random
inputs)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.kernels.fp8_w8a8_matmul import strip_counters, w8a8_matmul
    from pagedllm.model.layers.fp8 import quantize_weight, tile_quantized_linear_reference

    def exact_activations(rows, k, block_k, gen):
        codes = torch.randint(0, 256, (rows, k), generator=gen, dtype=torch.uint8)
        codes[(codes & 0x7F) == 0x7F] = 0  # e4m3's NaN codes
        x = codes.view(torch.float8_e4m3fn).float()
        for start in range(0, k, block_k):
            x[:, start] = 448.0  # every slice's amax: its scale is exactly 2^e
        power = 2.0 ** torch.randint(-8, -3, (rows, 1), generator=gen).float()
        return (x * power).to(torch.float16)  # 11 bits: a sum-order difference is small

    gen = torch.Generator().manual_seed(7)
    cases = [  # rows, out, in, (BLOCK_N, BLOCK_K, warps, stages, split), bias
        (1, 96, 512, (32, 128, 4, 2, 1), False),
        (3, 70, 512, (32, 128, 4, 2, 4), True),
        (16, 80, 384, (64, 128, 4, 2, 2), False),
        (5, 64, 200, (32, 64, 4, 2, 2), True),
        (1, 70, 200, (32, 64, 4, 2, 2), True),  # one row, split, ragged K
    ]
    for rows, n, k, config, has_bias in cases:
        q, scale = quantize_weight(torch.randn(n, k, generator=gen))
        x = exact_activations(rows, k, config[1], gen)
        bias = torch.randn(n, generator=gen).to(torch.float16) if has_bias else None
        want = tile_quantized_linear_reference(x, q, scale, bias, config[1]).float()
        for _ in range(2):  # the second call finds the counters the first left
            got = w8a8_matmul(x, q, scale, bias, config).float()
            error = ((got - want).abs().max() / want.abs().max()).item()
            assert error < 2e-3, (rows, n, k, config, error)
        assert int(strip_counters(x.device, 1).abs().sum()) == 0
    print("W8A8_OK")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernel")
def test_w8a8_kernel_under_the_interpreter() -> None:
    run_interpreted(CHECK, "W8A8_OK", timeout=300)


GATED = textwrap.dedent(
    """
    import torch
    from pagedllm.kernels.fp8_w8a8_matmul import w8a8_matmul
    from pagedllm.model.layers.activation import silu_and_mul
    from pagedllm.model.layers.fp8 import quantize_weight, tile_quantized_linear_reference
    from tests.unit.interpreted import assert_refused

    def exact_gate_up(rows, k, block_k, gen):
        # up = t / 16 with t e4m3 codes (no powers of two: see the module's note) times 2^e,
        # and each slice's first t = 448 x 2^e. A gate of 16 keeps t (silu(16) = 16 (1 - 1e-7):
        # the product rounds to t in float16); one of -16 leaves ~1e-7 t, which quantizes to 0.
        # Identity in place of silu would give -t there: the check tells them apart.
        codes = torch.randint(0, 128, (rows, k), generator=gen, dtype=torch.uint8)
        codes[((codes & 0x07) == 0) | (codes == 0x7F)] = 0x39  # 1.125: no power of two, NaN
        sign = torch.where(torch.rand(rows, k, generator=gen) < 0.5, -1.0, 1.0)
        t = codes.view(torch.float8_e4m3fn).float() * sign
        t[:, ::block_k] = 448.0
        power = 2.0 ** torch.randint(-8, -3, (rows, 1), generator=gen).float()
        gate = torch.where(torch.rand(rows, k, generator=gen) < 0.7, 16.0, -16.0)
        gate[:, ::block_k] = 16.0
        return torch.cat([gate, t * power / 16], dim=1).to(torch.float16)

    gen = torch.Generator().manual_seed(11)
    for rows, n, k, config in [(1, 64, 512, (32, 128, 4, 2, 2)), (4, 48, 256, (32, 64, 4, 2, 2))]:
        q, scale = quantize_weight(torch.randn(n, k, generator=gen))
        gate_up = exact_gate_up(rows, k, config[1], gen)
        want = tile_quantized_linear_reference(silu_and_mul(gate_up), q, scale, None, config[1])
        got = w8a8_matmul(gate_up, q, scale, None, config, gated=True).float()
        error = ((got - want.float()).abs().max() / want.float().abs().max()).item()
        assert error < 2e-3, (rows, n, k, config, error)
    assert_refused(lambda: w8a8_matmul(gate_up[:, :-1], q, scale, None, config, gated=True),
                   "gated x must be")
    print("GATED_OK")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernel")
def test_w8a8_gated_activation_under_the_interpreter() -> None:
    """The down projection's fused activation: silu(gate) * up as each slice is loaded,
    for one row and for several."""
    run_interpreted(GATED, "GATED_OK", timeout=300)
