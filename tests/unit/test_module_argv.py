"""Children run our modules from the package their parent imported, whatever the working
directory holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pagedllm.executor.parent_watch import module_argv


def plant_decoy(directory: Path) -> None:
    decoy = directory / "pagedllm"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('DECOY IMPORTED')\n")


def test_a_child_skips_a_pagedllm_folder_in_the_working_directory(tmp_path: Path) -> None:
    plant_decoy(tmp_path)
    # What ``python -m`` alone would do there: the folder shadows the package.
    plain = subprocess.run([sys.executable, "-m", "pagedllm.envs"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert plain.returncode != 0 and "DECOY IMPORTED" in plain.stderr
    ours = subprocess.run(module_argv("pagedllm.envs"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert ours.returncode == 0, ours.stderr


def test_the_module_runs_as_main_with_its_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "echo_args.py").write_text(
        "import sys\nprint(__name__, sys.argv[1:], sys.argv[0].endswith('echo_args.py'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # the child sees the parent's path
    done = subprocess.run(module_argv("echo_args", "a", "b c", "--x=1"), capture_output=True,
                          text=True, timeout=60, cwd=tmp_path.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "__main__ ['a', 'b c', '--x=1'] True"
