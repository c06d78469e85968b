"""Host time of one engine-core step with N requests decoding, without a model: the
scheduler's ``schedule()`` and ``update_from_output()`` in async-scheduling order (step N+1
scheduled before step N's tokens are applied), the encoding of the step's outputs for the
front end, and the model runner's host side: taking in the scheduler's output, the step's
inputs written into staging arrays as a CUDA step's are (``fill_host``), the sampling
metadata, and reading the sampled tokens back (``resolve``). The runner is qwen3-0.6b's
(W1's), built on the CPU without weights; no device copy or kernel is timed. Besides the
mean of each phase: the 99th percentile and the longest of the steps' host times, and how
often the garbage collector made a full pass (a stall of the step it falls in); apart, the
sampling metadata built afresh for the batch (as a step whose batch changed does).

    python benchmarks/host_step.py [--running 256,512,1024] [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from gc_passes import FullCollections

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request
from pagedllm.core.scheduler import Scheduler
from pagedllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.heap import freeze_built_engine, freeze_library_heap
from pagedllm.engine.messages import Codec, EngineCoreOutputs
from pagedllm.metrics.stats import EngineSnapshot, IterationStats
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.input_buffers import buffer_shapes, fill_host
from pagedllm.worker.model_runner import ModelRunner, mark_pending
from pagedllm.worker.sampling_inputs import build_sampling_metadata
from pagedllm.worker.step_output import LaunchedStep, SampledOnDevice
from pagedllm.worker.step_plan import plan_step

MODEL = Path(__file__).parent / "model-configs" / "qwen3-0.6b"
MAX_TOKENS = 16384
MAX_MODEL_LEN = 8192
PROMPT = 512
W1_BLOCKS = 56_000
PHASES = ("schedule", "update", "encode", "runner in", "runner out")


def make_scheduler(running: int, prompt: int, steps: int, block_size: int) -> Scheduler:
    """Room for ``running`` requests of ``prompt`` tokens and ``steps`` more each."""
    # W1's pool on the H200 (~56,000 blocks), or more when the requests need it
    blocks = max(W1_BLOCKS, running * (-(-(prompt + steps + 2) // block_size)) + 1)
    config = SchedulerConfig(max_num_seqs=running, max_num_batched_tokens=MAX_TOKENS)
    return Scheduler(config, KVCacheManager(blocks, block_size, True), MAX_MODEL_LEN)


def fill(
    scheduler: Scheduler,
    prompt: int,
    steps: int,
    runner: ModelRunner,
    arrays: dict[str, np.ndarray],
) -> None:
    """Admit as many requests as the scheduler runs at once and compute their prompts
    (the runner taken through the same steps); each may generate ``steps`` more tokens."""
    params = SamplingParams(max_tokens=steps + 2, ignore_eos=True, temperature=1.0)
    for i in range(scheduler.config.max_num_seqs):
        ids = [(i * 7919 + j) % 50000 + 10 for j in range(prompt)]
        scheduler.add_request(Request(f"req-{i}", ids, params, 2, float(i)))
    while len(scheduler.waiting) or any(
        r.num_computed_tokens < len(r.prompt_token_ids) for r in scheduler.running
    ):
        so = scheduler.schedule()
        runner.resolve(launch(runner, so, arrays))
        scheduler.update_from_output(so, sample(so))


def sample(so: SchedulerOutput) -> ModelRunnerOutput:
    """The step's sampled tokens, made up, in the runner's form (a tuple each)."""
    ids = so.sampling_req_ids
    return ModelRunnerOutput(ids, [(1000 + i % 30000,) for i in range(len(ids))])


def make_runner(running: int) -> ModelRunner:
    """qwen3-0.6b's runner on the CPU, no weights loaded: only its host side runs."""
    args = EngineArgs(
        model=str(MODEL), load_format="dummy", device="cpu", max_model_len=MAX_MODEL_LEN,
        max_num_seqs=running, max_num_batched_tokens=MAX_TOKENS,
    )  # fmt: skip
    return ModelRunner(args.create_engine_config())


def staging(running: int, max_blocks: int) -> dict[str, np.ndarray]:
    """The host staging arrays ``InputBuffers`` fills on CUDA, at these sizes."""
    shapes = buffer_shapes(MAX_TOKENS, running, max_blocks)
    return {
        name: torch.zeros(shape, dtype=dtype).numpy() for name, (shape, dtype) in shapes.items()
    }


def launch(runner: ModelRunner, so: SchedulerOutput, arrays: dict[str, np.ndarray]) -> LaunchedStep:
    """The runner's host work for one step, as ``execute_model`` does it on CUDA, with the
    sampled ids made up in place of the model's."""
    runner.update_states(so)
    host, states, _ = runner.host_inputs(so)
    plan = plan_step(host, 1)
    fill_host(arrays, host, plan, 0, runner.block_size)
    # assemble_step_batch's host copies of the attention metadata
    arrays["query_start_loc"][: plan.padded_reqs + 1].tolist()
    arrays["seq_lens"][: plan.padded_reqs].tolist()
    ids = torch.arange(len(states), dtype=torch.int64)
    sampled = SampledOnDevice(ids, ids, None, [0] * len(states), None)
    mark_pending(states)
    return LaunchedStep(host.req_ids, host.sampled_req_indices, states, sampled, None)


def metadata_rebuild_ms(runner: ModelRunner, states: list, repeats: int = 50) -> float:
    """The sampling metadata built afresh for these rows: what a step pays when its batch
    changed since the last (a request finished or joined); not in the per-step total."""
    vocab, cpu = runner.model_config.vocab_size, torch.device("cpu")
    start = time.perf_counter()
    for _ in range(repeats):
        build_sampling_metadata(states, vocab, cpu)
    return (time.perf_counter() - start) / repeats * 1e3


def measure(running: int, steps: int, full: FullCollections) -> dict[str, float]:
    runner = make_runner(running)
    arrays = staging(running, MAX_MODEL_LEN // runner.block_size)
    scheduler = make_scheduler(running, PROMPT, steps, runner.block_size)
    freeze_built_engine()  # as the engine core process does once its core is built
    fill(scheduler, PROMPT, steps, runner, arrays)
    codec = Codec()
    times = dict.fromkeys(PHASES, 0.0)
    totals = []
    in_flight = scheduler.schedule()
    launched = launch(runner, in_flight, arrays)
    every_row = launched.states  # all N requests sample in this first step
    full.count, full.on = 0, True
    for _ in range(steps):
        t0 = time.perf_counter()
        nxt = scheduler.schedule()
        t1 = time.perf_counter()
        next_launched = launch(runner, nxt, arrays)
        t2 = time.perf_counter()
        runner.resolve(launched)
        t3 = time.perf_counter()
        outputs = scheduler.update_from_output(in_flight, sample(in_flight))
        t4 = time.perf_counter()
        snapshot = EngineSnapshot(running, 0, 0.5, 0, 0)
        message = EngineCoreOutputs(outputs, IterationStats(), snapshot)
        codec.encode(message)
        t5 = time.perf_counter()
        for phase, span in zip(PHASES, (t1 - t0, t4 - t3, t5 - t4, t2 - t1, t3 - t2)):
            times[phase] += span
        totals.append(t5 - t0)
        in_flight, launched = nxt, next_launched
    full.on = False
    result = {k: v / steps * 1e3 for k, v in times.items()}
    result["total"] = sum(result.values())
    result["rebuild"] = metadata_rebuild_ms(runner, every_row)  # apart from the total
    result["p99"] = float(np.percentile(totals, 99)) * 1e3
    result["max"] = max(totals) * 1e3
    result["full GCs"] = full.count * 100 / steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", default="256,512,1024")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    freeze_library_heap()  # as the engine core process does before it builds anything
    full = FullCollections()
    columns = [f"{p} ms" for p in PHASES]
    columns += ["total ms", "p99 step ms", "max step ms", "full GCs / 100 steps"]
    columns += ["metadata rebuild ms"]
    print("| running | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for n in (int(v) for v in args.running.split(",")):
        t = measure(n, args.steps, full)
        cells = " | ".join(f"{t[k]:.3f}" for k in (*PHASES, "total", "p99", "max"))
        print(f"| {n} | {cells} | {t['full GCs']:.1f} | {t['rebuild']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
