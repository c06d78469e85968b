"""Where a serving run's large inter-token gaps come from: a client's per-request gaps
(``--save-result`` of ``pagedllm bench serve``, or ``vllm bench serve --save-detailed``)
against the engine's steps (``Step ended at ...`` and ``Outputs sent early at ...`` lines of
a pagedllm server run with PAGEDLLM_LOGGING_LEVEL=DEBUG).

A gap at or above the P99 that is followed by a near-zero gap means two steps' tokens
arrived together (held back between the engine and the client); one that is not means the
engine produced nothing for the request for that long (a long step, or a step without it).

    python benchmarks/itl_gaps.py RESULT.json [SERVER.log]
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import sys
from pathlib import Path

STEP = re.compile(r"Step ended at ([\d.]+) after ([\d.]+) ms, (\d+) tokens sampled")
# A step's outputs sent before the next step's launch, which blocks (engine/core.py).
EARLY = re.compile(r"Outputs sent early at ([\d.]+), (\d+) tokens sampled")


def gap_shape(itls: list[list[float]]) -> dict[str, float]:
    """P99 gaps, and how many of them are followed by a near-zero one (a clump)."""
    flat = sorted(x for r in itls for x in r)
    if not flat:
        return {}
    p99 = flat[int(0.99 * (len(flat) - 1))]
    median = statistics.median(flat)
    big = clumps = 0
    for gaps in itls:
        for i, gap in enumerate(gaps):
            if gap >= p99:
                big += 1
                clumps += i + 1 < len(gaps) and gaps[i + 1] < 0.2 * median
    return {"gaps": len(flat), "median_ms": 1e3 * median, "p99_ms": 1e3 * p99,
            "p99_gaps": big, "followed_by_near_zero": clumps}  # fmt: skip


def step_shape(log_text: str, since: float, until: float) -> dict[str, float]:
    """The engine's steps that ended in [since, until] (wall clock, seconds)."""
    steps = [
        (float(at), float(ms), int(n))
        for at, ms, n in STEP.findall(log_text)
        if since <= float(at) <= until
    ]
    if not steps:
        return {}
    durations = sorted(ms for _, ms, _ in steps)
    # The longest stretch between two consecutive steps that sampled tokens.
    early = [
        float(at) for at, n in EARLY.findall(log_text) if int(n) and since <= float(at) <= until
    ]
    ends = sorted([at for at, _, n in steps if n > 0] + early)
    longest = max((b - a for a, b in itertools.pairwise(ends)), default=0.0)
    return {"steps": len(steps), "median_step_ms": statistics.median(durations),
            "p99_step_ms": durations[int(0.99 * (len(durations) - 1))],
            "max_step_ms": durations[-1], "longest_between_outputs_ms": 1e3 * longest,
            "empty_steps": sum(1 for _, _, n in steps if n == 0)}  # fmt: skip


SCHEDULED = re.compile(r"Step: \d+ requests \(\d+ new\), (\d+) tokens \((\d+) prompt")


def mixed_graph(tokens: int) -> str:
    """The mixed CUDA graph a step of ``tokens`` runs in ("graph N"), or "eager" past the
    largest (``MIXED_SIZES``)."""
    from pagedllm.worker.cuda_graphs import MIXED_SIZES

    return next((f"graph {n}" for n in MIXED_SIZES if tokens <= n), "eager")


def steps_by_graph(log_text: str, since: float, until: float) -> dict[str, dict[str, float]]:
    """Steps that carry prompt tokens, grouped by the mixed CUDA graph their token count
    runs in (``MIXED_SIZES``; "eager" past the largest), with decode-only steps apart: how
    many, and the median and largest wall time of the step after each, which under async
    scheduling is the one that waits for it (ms)."""
    found: dict[str, list[float]] = {}
    launched: tuple[int, int] | None = None  # (tokens, prompt tokens) of this call's step
    waited_for: tuple[int, int] | None = None  # ... and of the call before's
    for line in log_text.splitlines():
        if (scheduled := SCHEDULED.search(line)) is not None:
            launched = (int(scheduled.group(1)), int(scheduled.group(2)))
            continue
        if (ended := STEP.search(line)) is None:
            continue
        if waited_for is not None and since <= float(ended.group(1)) <= until:
            tokens, prompt = waited_for
            name = "decodes only" if prompt == 0 else mixed_graph(tokens)
            found.setdefault(name, []).append(float(ended.group(2)))
        waited_for, launched = launched, None
    return {
        name: {"steps": len(ms), "median_ms": statistics.median(ms), "max_ms": max(ms)}
        for name, ms in sorted(found.items(), key=lambda kv: _graph_order(kv[0]))
    }


def _graph_order(name: str) -> int:
    """decodes only, then the graphs by size, then eager."""
    if name.startswith("graph "):
        return int(name.split()[1])
    return -1 if name == "decodes only" else 1 << 30


def main() -> None:
    result = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(gap_shape(result.get("itls", [])), indent=1))
    if len(sys.argv) > 2:
        text = Path(sys.argv[2]).read_text()
        print(json.dumps(step_shape(text, 0.0, float("inf")), indent=1))
        print(json.dumps(steps_by_graph(text, 0.0, float("inf")), indent=1))


if __name__ == "__main__":
    main()
