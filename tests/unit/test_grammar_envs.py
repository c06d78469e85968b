"""PAGEDLLM_MAX_GRAMMAR_BYTES and PAGEDLLM_XGRAMMAR_CACHE_MB (or vLLM's
VLLM_XGRAMMAR_CACHE_MB): the structured-output bounds, read by name and refused by name."""

from __future__ import annotations

import pytest

from pagedllm import envs

NAMES = ("PAGEDLLM_MAX_GRAMMAR_BYTES", "PAGEDLLM_XGRAMMAR_CACHE_MB", "VLLM_XGRAMMAR_CACHE_MB")


@pytest.fixture(autouse=True)
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    assert envs.max_grammar_bytes() == 256 << 10
    assert envs.grammar_cache_bytes() == 512 << 20


def test_ours_then_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEDLLM_MAX_GRAMMAR_BYTES", "1000")
    monkeypatch.setenv("VLLM_XGRAMMAR_CACHE_MB", "64")
    assert envs.max_grammar_bytes() == 1000
    assert envs.grammar_cache_bytes() == 64 << 20
    monkeypatch.setenv("PAGEDLLM_XGRAMMAR_CACHE_MB", "8")
    assert envs.grammar_cache_bytes() == 8 << 20


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots"])
@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("PAGEDLLM_MAX_GRAMMAR_BYTES", envs.max_grammar_bytes),
        ("PAGEDLLM_XGRAMMAR_CACHE_MB", envs.grammar_cache_bytes),
        ("VLLM_XGRAMMAR_CACHE_MB", envs.grammar_cache_bytes),
    ],
)
def test_bad_values_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, name, read, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be a positive whole number"):
        read()
