"""The CPU's one-pass RMSNorm kernels against torch's, and the CPU op set that uses them
where they apply (float32 rows) and torch's elsewhere."""

from __future__ import annotations

import pytest
import torch

from pagedllm.kernels import cpu_norm
from pagedllm.model.layers.device_ops import CPU_OPS, device_ops
from pagedllm.model.layers.norm import add_rms_norm, rms_norm


@pytest.mark.parametrize("rows", [1, 3, 70])  # 70: more than one task of 32 rows
def test_the_kernels_match_torchs_rms_norm(rows):
    generator = torch.Generator().manual_seed(rows)
    x, residual = torch.randn(2, rows, 576, generator=generator)
    weight = torch.rand(576, generator=generator)
    torch.testing.assert_close(cpu_norm.rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-5))
    got, got_sum = cpu_norm.add_rms_norm(x, residual, weight, 1e-6)
    want, want_sum = add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(got, want)
    assert torch.equal(got_sum, want_sum)


def test_the_cpu_op_set_takes_views_and_other_dtypes():
    assert device_ops(torch.device("cpu")) is CPU_OPS
    x = torch.randn(64, 4).t()  # a transposed view, as the CPU's product returns
    weight = torch.rand(64)
    torch.testing.assert_close(CPU_OPS.rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-5))
    half = x.to(torch.bfloat16)
    out, summed = CPU_OPS.add_rms_norm(half, half, weight.to(torch.bfloat16), 1e-5)
    want, want_sum = add_rms_norm(half, half, weight.to(torch.bfloat16), 1e-5)
    assert torch.equal(out, want) and torch.equal(summed, want_sum)  # torch's own path


def test_a_wrong_weight_is_refused():
    with pytest.raises(RuntimeError, match="weight must be"):
        cpu_norm.rms_norm(torch.randn(2, 64), torch.rand(32), 1e-5)
