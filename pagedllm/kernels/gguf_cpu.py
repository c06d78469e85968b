"""GGUF's quantized blocks (Q4_0, Q4_1, Q8_0) used as stored on the CPU: products
(``linear``) and row lookups (``rows``) by the C++ kernels of ``pagedllm/csrc/gguf_cpu.cpp``.

The kernels need AVX2, FMA and F16C, and are compiled once per machine, torch version and
source (torch's extension builder: a C++ compiler and ninja; ~1 minute), into pagedllm's
cache; ``python -m pagedllm.kernels.gguf_cpu`` builds them ahead (the setup script does).
Where they cannot be built, ``unavailable_reason`` says why and GGUF weights are
dequantized instead.

Invariants: a weight is a contiguous uint8 tensor [rows, row bytes], each row whole 32-value
blocks of one type (``BLOCK_BYTES``); inputs and results are float32.
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
from pagedllm.logger import init_logger

logger = init_logger(__name__)

# GGMLQuantizationType value -> bytes of one 32-value block.
BLOCK_BYTES = {2: 18, 3: 20, 8: 34}  # Q4_0, Q4_1, Q8_0
BLOCK_VALUES = 32
_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "gguf_cpu.cpp"
_NEEDED_FLAGS = ("avx2", "fma", "f16c")


def unavailable_reason() -> str | None:
    """None when the kernels are built (building them the first time), else why not."""
    return _build()[1]


def linear(weight: torch.Tensor, qtype: int, x: torch.Tensor) -> torch.Tensor:
    """``x W^T`` for x [rows, in] (any float dtype; computed in float32): [rows, out] float32."""
    return _module().gguf_linear(weight, qtype, x.float().contiguous())


def rows(weight: torch.Tensor, qtype: int, in_features: int, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (int64 [count]) of the weight, dequantized: [count, in_features] float32."""
    return _module().gguf_rows(weight, qtype, in_features, ids.contiguous())


def _module() -> ModuleType:
    module, reason = _build()
    if module is None:
        raise RuntimeError(f"GGUF CPU kernels are unavailable: {reason}")
    return module


@functools.cache
def _build() -> tuple[ModuleType | None, str | None]:
    from pagedllm.cpu_platform import cpu_flags

    missing = [f for f in _NEEDED_FLAGS if f not in cpu_flags()]
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + torch.__version__.encode()).hexdigest()[:16]
    directory = envs.cache_root() / "kernels" / f"gguf_cpu-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    _put_ninja_on_path()
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name="pagedllm_gguf_cpu",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: dequantize instead
        first_line = str(error).strip().split("\n", 1)[0][:300]
        return None, f"building {_SOURCE.name} failed ({type(error).__name__}: {first_line})"
    return module, None


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the one pip installs (a dependency) sits
    beside this interpreter, which a venv's python run by its path does not put on PATH."""
    if shutil.which("ninja") is None:
        here = str(Path(sys.executable).parent)
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


def main() -> int:
    """``python -m pagedllm.kernels.gguf_cpu``: build the kernels now (not at first use)."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"GGUF CPU kernels not built, GGUF weights will be dequantized: {reason}")
        return 0
    print("GGUF CPU kernels built.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
