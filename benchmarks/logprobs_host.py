"""The host's per-step logprob bookkeeping for 256 requests (logprobs=5), with the start-up
heap frozen out of the garbage collector (``PAGEDLLM_FREEZE_GC``, the default) and without:
each mode in a fresh process that first builds an engine (the bundled SmolLM2), then runs
400 steps of what resolving a step and the output processor do per row (``to_lists`` and
``LogprobsAccumulator.add_sample``), keeping every position, as a long generation does.

    python benchmarks/logprobs_host.py [--record]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

STEPS, ROWS = 400, 256


def one_mode() -> float:
    import torch

    from pagedllm import LLM
    from pagedllm.engine.logprobs_accumulator import LogprobsAccumulator
    from pagedllm.sample.logprobs import LogprobsTensors

    LLM(kv_cache_memory_bytes="64M", max_model_len=512)  # a real engine process's heap
    g = torch.Generator().manual_seed(0)
    tensors = LogprobsTensors(
        torch.randint(0, 49152, (ROWS, 5), generator=g), torch.randn(ROWS, 5, generator=g),
        torch.randn(ROWS, generator=g), torch.randint(1, 100, (ROWS,), generator=g),
    )  # fmt: skip
    chosen = torch.randint(0, 49152, (ROWS,), generator=g).tolist()
    accumulators = [LogprobsAccumulator(5, None, False, None) for _ in range(ROWS)]
    start = time.perf_counter()
    for _ in range(STEPS):
        for acc, lists in zip(accumulators, tensors.to_lists(chosen, [5] * ROWS)):
            acc.add_sample(lists)
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(f"RESULT {one_mode()}")
        return
    rows = ["| start-up heap | bookkeeping per step (256 rows) |", "|---|---|"]
    for label, env in (("frozen (default)", "1"), ("not frozen", "0")):
        done = subprocess.run(
            [sys.executable, __file__, "--one"], capture_output=True, text=True,
            env={**os.environ, "PAGEDLLM_FREEZE_GC": env}, check=True,
        )  # fmt: skip
        seconds = float(done.stdout.split("RESULT ")[-1])
        rows.append(f"| {label} | {seconds * 1e3:.2f} ms |")
    print("\n".join(rows))
    if args.record:
        sys.path.insert(0, os.path.dirname(__file__))
        from record import append_record, device_name

        workload = (f"{ROWS} rows x {STEPS} steps of to_lists + add_sample (logprobs=5, no "
                    "text), after building the bundled SmolLM2 engine; mean per step")  # fmt: skip
        append_record("Logprob bookkeeping on the host", device_name(), workload, rows)


if __name__ == "__main__":
    main()
