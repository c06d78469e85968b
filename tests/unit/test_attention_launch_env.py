"""PAGEDLLM_ATTENTION_PREFILL_CONFIG: the prefill launch of the paged-attention kernel."""

from __future__ import annotations

import pytest

from pagedllm.kernels import attention_launch as pa


def test_default_is_the_tuned_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGEDLLM_ATTENTION_PREFILL_CONFIG", raising=False)
    assert pa.prefill_config() == pa.PREFILL_CONFIG


def test_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEDLLM_ATTENTION_PREFILL_CONFIG", "64,8,3,128")
    assert pa.prefill_config() == pa.LaunchConfig(64, 8, 3, 128)


@pytest.mark.parametrize("spec", ["64,8,3", "64,8,3,100", "a,b,c,d", "64,5,3,64"])
def test_bad_values_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("PAGEDLLM_ATTENTION_PREFILL_CONFIG", spec)
    with pytest.raises(ValueError, match="PAGEDLLM_ATTENTION_PREFILL_CONFIG"):
        pa.prefill_config()
