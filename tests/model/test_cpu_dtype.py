"""The CPU's default dtype keeps greedy outputs: the bundled SmolLM2-135M, teacher-forced over
a fixed 512-token text, picks the same top-1 token as its float32 self at >= 99% of
positions. float16 is checked whatever this machine's default, since the dtype table
(pagedllm/cpu_platform.py) chooses it where the CPU computes in it natively.

Measured (2-core Xeon, AVX512-FP16): float16 99.8%, perplexity -0.02%; bfloat16 97.8%
(why the table never picks bfloat16; test_fp8_quality.py's docstring explains the near
ties of this text that make rounding flip tokens)."""

from __future__ import annotations

import pytest

from tests.conftest import engine_in_process
from tests.model.teacher_forcing import Scores, score


@pytest.mark.parametrize("dtype", ["auto", "float16"])
def test_cpu_dtype_agrees_with_float32(float32_scores: Scores, dtype, monkeypatch):
    monkeypatch.delenv("PAGEDLLM_CPU_DTYPE", raising=False)  # the suite pins float32
    with engine_in_process():
        got = score(dtype=dtype, device="cpu")
    assert got.agreement(float32_scores) >= 0.99
    assert abs(got.perplexity_rise(float32_scores)) < 0.005
