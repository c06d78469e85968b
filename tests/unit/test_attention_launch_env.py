"""PAGEDLLM_ATTENTION_PREFILL_CONFIG and PAGEDLLM_ATTENTION_DECODE_CONFIG: launches of the
paged-attention kernel in place of the GPU's tuned ones."""

from __future__ import annotations

import pytest

from pagedllm.kernels import attention_launch as al

PREFILL = "PAGEDLLM_ATTENTION_PREFILL_CONFIG"
DECODE = "PAGEDLLM_ATTENTION_DECODE_CONFIG"


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PREFILL, raising=False)
    monkeypatch.delenv(DECODE, raising=False)


def test_defaults_are_the_gpus_tuned_launches() -> None:
    assert al.prefill_config() == al.PREFILL_CONFIG
    assert al.decode_config() == al.DECODE_CONFIG
    assert al.decode_config(al.H100) == al.H100.decode != al.DECODE_CONFIG


def test_prefill_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFILL, "64,8,3,128")
    assert al.prefill_config() == al.LaunchConfig(64, 8, 3, 128)
    assert al.launch_config(7, False, al.H100) == al.LaunchConfig(64, 8, 3, 128)
    assert al.launch_config(1, False) == al.DECODE_CONFIG  # decodes keep theirs


def test_decode_override_is_for_16_bit_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DECODE, "32,2,4")
    assert al.decode_config(al.H100) == al.LaunchConfig(32, 2, 4)
    assert al.launch_config(1, False, al.H100) == al.LaunchConfig(32, 2, 4)
    assert al.launch_config(1, True, al.H100) == al.FP8_DECODE_CONFIG
    assert al.launch_config(7, False) == al.PREFILL_CONFIG


@pytest.mark.parametrize(
    ("name", "spec"),
    [(PREFILL, "64,8,3"), (PREFILL, "64,8,3,100"), (PREFILL, "a,b,c,d"), (PREFILL, "64,5,3,64"),
     (DECODE, "64,4,2,64"), (DECODE, "64,4"), (DECODE, "48,4,2"), (DECODE, "64,4,x")],
)  # fmt: skip
def test_bad_values_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, spec: str
) -> None:
    monkeypatch.setenv(name, spec)
    with pytest.raises(ValueError, match=name):
        al.launch_config(1 if name == DECODE else 7, False)
