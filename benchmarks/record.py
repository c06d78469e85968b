"""Append a benchmark record to benchmarks/RESULTS.md: date, device, commit, command, numbers."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def commit() -> str:
    # The GPU machine gets a copy of the working tree whose git metadata may lag: the
    # caller then names the commit it sent.
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS.parent)
        return done.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def append_record(title: str, device: str, workload: str, lines: list[str]) -> None:
    record = [
        f"\n## {title}, {datetime.date.today().isoformat()}",
        f"- device: {device}",
        f"- commit: {commit()}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- workload: {workload}",
        "",
        *lines,
        "",
    ]
    with RESULTS.open("a") as f:
        f.write("\n".join(record))
