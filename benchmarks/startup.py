"""Start-up to the first token (issue 18's W4 on any device), and where it goes: a fresh
``python`` runs ``from pagedllm import LLM``, builds ``LLM(...)`` and generates one token
of a 128-token prompt; this script timestamps each of its log lines against the process's
start and reads the milestones off them. Runs alternate between this tree and, with
``--base``, another checkout (its own pagedllm and engine process), so both see the same
machine state (page cache, bytecode warm after the first runs).

    python benchmarks/startup.py [--model M] [--load-format dummy] [--max-model-len N]
        [--dtype D] [--with-tokenizer] [--runs 3] [--base /tmp/base]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = """
import time
start = time.perf_counter()
from pagedllm import LLM, SamplingParams
print(f"MARK imported {{time.perf_counter() - start:.3f}}", flush=True)
llm = LLM({kwargs})
print(f"MARK constructed {{time.perf_counter() - start:.3f}}", flush=True)
params = SamplingParams(max_tokens=1, detokenize=False)
llm.generate({{"prompt_token_ids": [5] * 128}}, params, use_tqdm=False)
print("FIRST-TOKEN", flush=True)
"""

# Milestones: the first log line (of either process) that holds the text, in the order
# they happen; the seconds are since the ``python`` process started.
MILESTONES = {
    "pagedllm imported (front end)": "MARK imported",
    "engine process launched": "Engine core process started",
    "front end's configuration built": "Non-default args",
    "engine built ahead from the arguments": "built from the engine arguments",
    "engine's config received": "config received at",
    "engine core ready": "Engine core ready",
    "first token": "FIRST-TOKEN",
}


def one_run(tree: Path, kwargs: str) -> dict[str, float]:
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}  # the tree's pagedllm
    start = time.perf_counter()
    cmd = [sys.executable, "-c", CHILD.format(kwargs=kwargs)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tree
    )
    seen: dict[str, float] = {}
    tail: deque[str] = deque(maxlen=20)  # the child's last lines, shown if it fails
    assert proc.stdout is not None
    for line in proc.stdout:
        elapsed = time.perf_counter() - start
        tail.append(line)
        for name, text in MILESTONES.items():
            if text in line and name not in seen:
                seen[name] = elapsed
    if proc.wait() != 0 or "first token" not in seen:
        output = "".join(tail)
        raise SystemExit(f"the run in {tree} failed (exit {proc.returncode}):\n{output}")
    return seen


def table(label: str, runs: list[dict[str, float]]) -> list[str]:
    lines = [f"{label}: median of {len(runs)} runs (min-max), seconds since python started"]
    for name in MILESTONES:
        values = [r[name] for r in runs if name in r]
        if values:
            lines.append(
                f"  {name:40s} {statistics.median(values):6.2f} "
                f"({min(values):.2f}-{max(values):.2f}; in {len(values)} of {len(runs)})"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--with-tokenizer", action="store_true",
                    help="load the tokenizer (W4 skips it: token ids in)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", type=Path, help="another checkout, run alternately")
    args = ap.parse_args()
    # The children run in their trees: a model given as a local path is resolved here.
    model = args.model
    if model and Path(model).exists():
        model = str(Path(model).resolve())
    kwargs = (
        f"model={model!r}, load_format={args.load_format!r}, dtype={args.dtype!r}, "
        f"max_model_len={args.max_model_len}, "
        f"skip_tokenizer_init={not args.with_tokenizer}, seed=0"
    )
    trees = {"this tree": HERE, **({"base": args.base.resolve()} if args.base else {})}
    for tree in trees.values():
        one_run(tree, kwargs)  # warm: bytecode compiled, files in the page cache
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            results[name].append(one_run(tree, kwargs))
    print(f"LLM({kwargs})")
    for name, runs in results.items():
        print("\n".join(table(f"{name} ({trees[name]})", runs)))


if __name__ == "__main__":
    main()
