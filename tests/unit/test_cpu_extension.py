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
        staged.append(
            cpu_extension.staged_sources(cpu_extension._build_directory(Path("/bin/ninja")))
        )
    assert staged[0] == staged[1]
    assert {p.name for p in staged[0]} >= {"cpu_extension.cpp", "cpu_kernels.h"}
    for path in staged[0]:
        assert path.read_bytes() == (cpu_extension._SOURCES / path.name).read_bytes()


def test_the_ninja_beside_the_interpreter_builds_whatever_path_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ninjas (a venv's from pip, the system's) keep their command logs apart: ninja
    1.13 hashes commands differently, so one directory built by both in turn was rebuilt
    whole at every other start. The venv's is used with or without the venv on PATH, and
    another ninja gets another directory."""
    monkeypatch.setenv("PAGEDLLM_CACHE_ROOT", str(tmp_path / "cache"))
    venv_bin, system_bin = tmp_path / "venv" / "bin", tmp_path / "usr" / "bin"
    for folder in (venv_bin, system_bin):
        folder.mkdir(parents=True)
        (folder / "ninja").write_text("#!/bin/sh\n")
        (folder / "ninja").chmod(0o755)
    monkeypatch.setattr(cpu_extension.sys, "executable", str(venv_bin / "python"))
    for path in (str(system_bin), f"{system_bin}:{venv_bin}", f"{venv_bin}:{system_bin}"):
        monkeypatch.setenv("PATH", path)
        assert cpu_extension._ninja() == venv_bin / "ninja"
    (venv_bin / "ninja").unlink()
    assert cpu_extension._ninja() == system_bin / "ninja"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cpu_extension._ninja() is None
    one = cpu_extension._build_directory(venv_bin / "ninja")
    assert one == cpu_extension._build_directory(venv_bin / "ninja")
    assert one != cpu_extension._build_directory(system_bin / "ninja")
