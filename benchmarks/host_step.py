"""Host time of one engine-core step with N requests decoding, without a model: the
scheduler's ``schedule()`` and ``update_from_output()`` in async-scheduling order (step N+1
scheduled before step N's tokens are applied) and the encoding of the step's outputs for the
front end. The runner's input building is not in it (see gpu_workloads.py's profiles).

    python benchmarks/host_step.py [--running 256,512,1024] [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request
from pagedllm.core.scheduler import Scheduler
from pagedllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.engine.messages import Codec, EngineCoreOutputs
from pagedllm.metrics.stats import EngineSnapshot, IterationStats
from pagedllm.sampling_params import SamplingParams


def fill(running: int, prompt: int, block_size: int = 16) -> Scheduler:
    """A scheduler with ``running`` requests admitted and their prompts computed."""
    blocks = running * (prompt + 4096) // block_size + 1
    config = SchedulerConfig(max_num_seqs=running, max_num_batched_tokens=16384)
    scheduler = Scheduler(config, KVCacheManager(blocks, block_size, True), 8192)
    params = SamplingParams(max_tokens=4000, ignore_eos=True, temperature=1.0)
    for i in range(running):
        ids = [(i * 7919 + j) % 50000 + 10 for j in range(prompt)]
        scheduler.add_request(Request(f"req-{i}", ids, params, 2, float(i)))
    while len(scheduler.waiting) or any(
        r.num_computed_tokens < len(r.prompt_token_ids) for r in scheduler.running
    ):
        so = scheduler.schedule()
        scheduler.update_from_output(so, sample(so))
    return scheduler


def sample(so: SchedulerOutput) -> ModelRunnerOutput:
    ids = [rid for rid, (_, samples) in so.scheduled_requests.items() if samples]
    return ModelRunnerOutput(ids, [[1000 + i % 30000] for i in range(len(ids))])


def measure(running: int, steps: int) -> dict[str, float]:
    scheduler = fill(running, 512)
    codec = Codec()
    times = {"schedule": 0.0, "update": 0.0, "encode": 0.0}
    in_flight = scheduler.schedule()
    for _ in range(steps):
        t0 = time.perf_counter()
        nxt = scheduler.schedule()
        t1 = time.perf_counter()
        outputs = scheduler.update_from_output(in_flight, sample(in_flight))
        t2 = time.perf_counter()
        snapshot = EngineSnapshot(running, 0, 0.5, 0, 0)
        message = EngineCoreOutputs(outputs, IterationStats(), snapshot)
        codec.encode(message)
        t3 = time.perf_counter()
        times["schedule"] += t1 - t0
        times["update"] += t2 - t1
        times["encode"] += t3 - t2
        in_flight = nxt
    return {k: v / steps * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", default="256,512,1024")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print("| running | schedule ms | update ms | encode ms | total ms |")
    print("|---|---|---|---|---|")
    for n in (int(v) for v in args.running.split(",")):
        t = measure(n, args.steps)
        total = sum(t.values())
        cells = " | ".join(f"{t[k]:.3f}" for k in ("schedule", "update", "encode"))
        print(f"| {n} | {cells} | {total:.3f} |")


if __name__ == "__main__":
    main()
