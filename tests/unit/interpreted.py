"""Running a kernel check under Triton's CPU interpreter: in a subprocess, because the
interpreter is chosen when triton is first imported (this process may have imported it
compiled already)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def run_interpreted(check: str, marker: str, timeout: float) -> None:
    """Run ``check`` (Python source) with ``TRITON_INTERPRET=1`` from the repository root
    and assert it exited cleanly and printed ``marker`` (its stderr's tail otherwise)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env,
        timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0 and marker in done.stdout, done.stderr[-3000:]


def assert_refused(call: Callable[[], object], words: str) -> None:
    """``call()`` raises ValueError naming ``words`` (for the checks run interpreted)."""
    try:
        call()
    except ValueError as e:
        assert words in str(e), str(e)
    else:
        raise AssertionError(f"accepted where a ValueError naming {words!r} was expected")
