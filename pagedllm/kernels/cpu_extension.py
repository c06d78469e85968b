"""pagedllm's C++ CPU kernels (``pagedllm/csrc/*.cpp``: products on GGUF blocks, decode
attention on the paged KV cache), one extension module.

They need AVX2, FMA and F16C, and are compiled once per machine, torch version and source
(torch's extension builder: a C++ compiler and ninja; ~1 minute), into pagedllm's cache;
``python -m pagedllm.kernels.cpu_extension`` builds them ahead (the setup script does).
Where they cannot be built, ``unavailable_reason`` says why, and their callers take their
torch paths (GGUF weights dequantized, attention by ``scaled_dot_product_attention``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

from pagedllm import envs

_SOURCES = Path(__file__).resolve().parent.parent / "csrc"
_NEEDED_FLAGS = ("avx2", "fma", "f16c")


def unavailable_reason() -> str | None:
    """None when the kernels are built (building them the first time), else why not."""
    return _build()[1]


def module() -> ModuleType:
    """The built extension (RuntimeError with the reason where it cannot be built)."""
    built, reason = _build()
    if built is None:
        raise RuntimeError(f"pagedllm's CPU kernels are unavailable: {reason}")
    return built


@functools.cache
def _build() -> tuple[ModuleType | None, str | None]:
    from pagedllm.cpu_platform import cpu_flags

    missing = [f for f in _NEEDED_FLAGS if f not in cpu_flags()]
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    ninja = _ninja()
    if ninja is None:
        return None, "no ninja (pip install ninja)"
    directory = _build_directory(ninja)
    sources = [s for s in staged_sources(directory) if s.suffix == ".cpp"]
    if shutil.which("ninja") != str(ninja):  # only then: PATH's folders hold the compiler
        os.environ["PATH"] = str(ninja.parent) + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load

        built = load(
            name="pagedllm_cpu",
            sources=[str(s) for s in sources],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: torch paths instead
        first_line = str(error).strip().split("\n", 1)[0][:300]
        return None, f"building pagedllm/csrc failed ({type(error).__name__}: {first_line})"
    return built, None


def _source_files() -> list[Path]:
    """The extension's C++ sources and headers, in a fixed order."""
    return sorted(_SOURCES.glob("*.[ch]*"))


def _build_directory(ninja: Path) -> Path:
    """One per torch version, ninja and sources' contents (headers too). Per ninja: its
    log of the commands it ran is keyed by a hash that ninja 1.13 changed, so two ninjas
    building in one directory rebuild everything in turn (seen: a minute or more a start)."""
    digest = hashlib.sha256(torch.__version__.encode() + str(ninja).encode())
    for source in _source_files():
        digest.update(source.name.encode() + source.read_bytes())
    directory = envs.cache_root() / "kernels" / f"cpu-{digest.hexdigest()[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def staged_sources(directory: Path) -> list[Path]:
    """The sources copied into ``directory/src``, compiled from there: torch's builder
    rebuilds when the source paths change, so two checkouts (or venvs) with the same
    sources would otherwise rebuild in turn, a minute each time. A file already there has
    the same contents (they name the directory); a new one appears whole (os.replace)."""
    staged = directory / "src"
    staged.mkdir(exist_ok=True)
    paths = []
    for source in _source_files():
        target = staged / source.name
        if not target.exists():
            partial = target.with_name(f".{source.name}.{os.getpid()}")
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        paths.append(target)
    return paths


def _ninja() -> Path | None:
    """The ninja to build with, the same whatever PATH holds: the one pip installs (a
    dependency) beside this interpreter, which a venv's python run by its path does not put
    on PATH, else PATH's. torch's builder runs ``ninja`` from PATH, so the first one's
    folder goes first on PATH where PATH would find another."""
    beside = Path(sys.executable).parent / "ninja"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ninja")
    return None if found is None else Path(found)


def main() -> int:
    """``python -m pagedllm.kernels.cpu_extension``: build the kernels now, not at first use."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"pagedllm's CPU kernels not built (torch paths will run instead): {reason}")
        return 0
    print("pagedllm's CPU kernels built.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
