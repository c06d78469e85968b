"""What the CPU offers the engine: its instruction-set features (the default dtype is chosen
from them, float16 only once a quick product confirms it is fast here) and its cores (the
default thread count). Features and cores are read from /proc and /sys.

The dtype table is measured, not guessed (benchmarks/cpu_throughput.py --serving on the
2-core CI machine, SmolLM2-135M; quality by tests/model/test_cpu_dtype.py):

- bfloat16 is the fastest batched (AMX / AVX512-BF16 products) but rounds SmolLM2's weights
  too coarsely: teacher-forced top-1 agreement with float32 is 97.8%, under the 99% bar.
- float16 keeps 99.8% agreement. Where the CPU computes in it natively (AVX512-FP16 or
  AMX-FP16) it beat float32 on every serving figure (2 threads, host at load ~1.5, two
  runs): single stream 1.4x, 32 prompts 1.04-1.2x, 500-token TTFT 0.77-0.95x the time;
  its 32-row product alone is 1.3x slower than float32's, the rest of the step (half the
  bytes to move) more than pays for it.
  Without (AVX2 + F16C only, issue 21's figures) batched decode fell to a fifth of
  float32's, so those CPUs stay in float32.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CPUINFO = Path("/proc/cpuinfo")
_SYS_CPU = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str
    reason: str


# First row whose features the CPU has all of wins; the last row has none (any CPU).
_DTYPE_TABLE: tuple[tuple[frozenset[str], DtypeChoice], ...] = (
    (
        frozenset({"avx512_fp16"}),
        DtypeChoice(
            "float16",
            "the CPU computes in float16 natively (AVX512-FP16): faster than float32 single "
            "stream and batched, and 99.8% top-1 agreement with it (bfloat16 is faster batched "
            "but agrees on only 97.8%)",
        ),
    ),
    (
        frozenset({"amx_fp16"}),
        DtypeChoice(
            "float16",
            "the CPU computes in float16 natively (AMX-FP16), and float16 keeps 99.8% top-1 "
            "agreement with float32 (bfloat16 only 97.8%)",
        ),
    ),
    (
        frozenset(),
        DtypeChoice(
            "float32",
            "no native float16 arithmetic on this CPU (float16 products fall back to a slow "
            "path, batched decode 5x slower), and bfloat16 agrees with float32 on only 97.8% "
            "of greedy tokens; pass --dtype bfloat16 for its speed",
        ),
    ),
)


def cpu_flags(cpuinfo: Path = _CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where it is unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return frozenset(value.split())
    return frozenset()


def default_cpu_dtype(flags: frozenset[str]) -> DtypeChoice:
    """``--dtype auto`` on the CPU: the first row of the table the CPU's features satisfy."""
    for needed, choice in _DTYPE_TABLE:
        if needed <= flags:
            return choice
    raise AssertionError("the table's last row needs no feature")


def float16_batched_slowdown(rows: int = 32, tries: int = 20) -> float:
    """How much slower a ``rows``-row float16 product is than the float32 one here (the best
    of ``tries`` each, interleaved so that other processes' load falls on both alike; ~30 ms
    on a quiet machine). The table's float16 rows assume torch routes float16 products to a
    native kernel; a build or CPU that falls back to widening each element runs batched
    decode several times slower than float32, which this catches before the model is built.
    Timed on one thread: the fallback is slow per element, so one thread shows it, and one
    thread is never left waiting for a sibling another process took the core from (on a
    loaded 2-core host two threads timed 16 ms for a 0.3 ms product, whatever the dtype)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        products = [_product(torch.float16, rows), _product(torch.float32, rows)]
        best = [float("inf"), float("inf")]
        for _ in range(tries):
            for i, product in enumerate(products):
                start = time.perf_counter()
                product()
                best[i] = min(best[i], time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return best[0] / best[1]


def _product(dtype: Any, rows: int) -> Callable[[], Any]:
    """A small model's MLP product at ``dtype``, run once (kernel selection and packing are
    not what is timed)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1536, 576, generator=generator).to(dtype)
    x = torch.randn(rows, 576, generator=generator).to(dtype)
    torch.mm(weight, x.t())
    return lambda: torch.mm(weight, x.t())


def available_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity: a container's cpuset, taskset)."""
    return set(os.sched_getaffinity(0))


def physical_cores(cpus: set[int], sys_cpu: Path = _SYS_CPU) -> int:
    """How many physical cores ``cpus`` cover: hyper-threads of one core count once (they
    share its vector units, so a second intra-op thread on a core only adds contention)."""
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)  # no topology (some containers): every CPU counts
        cores.add((package, core))
    return max(1, len(cores))


def parse_cpu_binding(
    value: str, ranks: int, allowed: set[int]
) -> tuple[frozenset[int], ...] | None:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND: ``auto`` or ``nobind`` (or empty): None, the OS
    places the threads on the CPUs allowed (vLLM's ``auto`` binds per NUMA node; with one
    rank on one node that is the same set); else one CPU list per rank, ``|`` between ranks
    (``0-3|4-7``), each list ids and ranges (``0-3,8``). Every CPU must be allowed."""
    value = value.strip()
    if value in ("", "auto", "nobind"):
        return None
    lists = [_cpu_ids(part, value) for part in value.split("|")]
    if len(lists) != ranks:
        raise ValueError(
            f"VLLM_CPU_OMP_THREADS_BIND={value!r} gives {len(lists)} CPU list(s) for "
            f"{ranks} rank(s): give one per rank, separated by '|'."
        )
    outside = sorted(set().union(*lists) - allowed)
    if outside:
        raise ValueError(
            f"VLLM_CPU_OMP_THREADS_BIND={value!r} names CPUs {outside} this process may not "
            f"run on (allowed: {sorted(allowed)})."
        )
    return tuple(lists)


def _cpu_ids(part: str, whole: str) -> frozenset[int]:
    ids: set[int] = set()
    for item in part.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if match is None or int(match.group(2) or match.group(1)) < int(match.group(1)):
            raise ValueError(
                f"Cannot read CPU ids from VLLM_CPU_OMP_THREADS_BIND={whole!r}; write e.g. "
                "'0-3', '0-3,8' or '0-3|4-7' (one list per rank), or 'auto'."
            )
        first = int(match.group(1))
        ids.update(range(first, int(match.group(2) or first) + 1))
    return frozenset(ids)
