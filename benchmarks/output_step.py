"""The front end's time per engine step with N requests generating: one step's outputs
decoded from the engine process's frame and turned into ``RequestOutput``s by the
``OutputProcessor``, per output kind (DELTA is what the API server streams, FINAL_ONLY what
the offline ``LLM`` asks for). The delivered outputs are held for one step, as the
consumers of a server take them while the next step runs. Reports the mean, the 99th
percentile and the longest step, and the garbage collector's full passes per 100 steps.
Token ids only (no tokenizer): the detokenizer's work is left out.

    python benchmarks/output_step.py [--running 256,1024] [--steps 400]
        [--kinds DELTA,FINAL_ONLY] [--server-gc]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from gc_passes import FullCollections

from pagedllm.core.scheduler_output import EngineCoreOutput
from pagedllm.engine.heap import freeze_library_heap, widen_young_generation
from pagedllm.engine.messages import Codec, EngineCoreOutputs
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.metrics.stats import EngineSnapshot, IterationStats
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

PROMPT = 512
WARMUP = 20


def measure(running: int, steps: int, kind: RequestOutputKind, full: FullCollections) -> str:
    processor = OutputProcessor(None)
    params = SamplingParams(max_tokens=steps + WARMUP + 1, detokenize=False, output_kind=kind)
    for i in range(running):
        processor.add_request(f"r{i}", None, 0, None, list(range(PROMPT)), params, time.time())
    codec = Codec()
    snapshot = EngineSnapshot(running, 0, 0.5, 0, 0)
    times = []
    held = None  # the consumers' share of the last step's outputs
    full.count, full.on = 0, False
    for step in range(steps + WARMUP):
        full.on = step >= WARMUP
        outputs = [EngineCoreOutput(f"r{i}", [1000 + step]) for i in range(running)]
        frames = codec.encode(EngineCoreOutputs(outputs, IterationStats(), snapshot))
        start = time.perf_counter()
        delivered, _ = processor.process_outputs(codec.decode(frames).outputs)
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
        held = delivered
    full.on = False
    del held
    ms = np.array(times) * 1e3
    return (
        f"| {running} | {kind.name} | {ms.mean():.3f} | {np.percentile(ms, 99):.3f} | "
        f"{ms.max():.3f} | {full.count * 100 / steps:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", default="256,1024")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--kinds", default="DELTA,FINAL_ONLY")
    parser.add_argument(
        "--server-gc", action="store_true",
        help="the collector's settings of a `pagedllm serve` process (widen_young_generation)",
    )  # fmt: skip
    args = parser.parse_args()
    freeze_library_heap()  # as every front end does before it builds an engine
    if args.server_gc:
        widen_young_generation()
    full = FullCollections()
    print("| running | output kind | mean ms | p99 ms | max ms | full GCs / 100 steps |")
    print("|---|---|---|---|---|---|")
    for n in (int(v) for v in args.running.split(",")):
        for kind in args.kinds.split(","):
            print(measure(n, args.steps, RequestOutputKind[kind], full), flush=True)


if __name__ == "__main__":
    main()
