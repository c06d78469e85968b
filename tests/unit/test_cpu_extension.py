"""Where pagedllm's C++ CPU kernels are compiled from (kernels/cpu_extension.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pagedllm.kernels import cpu_extension


def test_two_checkouts_compile_the_same_source_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's builder rebuilds when the source paths change: two checkouts of the same
    sources stage them to the same files of one build directory, so neither rebuilds the
    other's extension."""
    monkeypatch.setenv("PAGEDLLM_CACHE_ROOT", str(tmp_path / "cache"))
    staged = []
    for checkout in ("one", "two"):
        copy = tmp_path / checkout / "csrc"
        shutil.copytree(cpu_extension._SOURCES, copy)
        monkeypatch.setattr(cpu_extension, "_SOURCES", copy)
        staged.append(cpu_extension.staged_sources(cpu_extension._build_directory()))
    assert staged[0] == staged[1]
    assert {p.name for p in staged[0]} >= {"cpu_extension.cpp", "cpu_kernels.h"}
    for path in staged[0]:
        assert path.read_bytes() == (cpu_extension._SOURCES / path.name).read_bytes()
