"""Where the engine process's start-up goes, stage by stage, in one process (issue 18's W4):
the engine process's imports (transformers' config modules included), CUDA's start (the
driver and the device properties the batch defaults read; CUDA only), the configuration
from the engine arguments, and the engine core's build; each stage's time and its
functions by cumulative time (cProfile, which slows Python-heavy stages: read the times
as shares).

    python benchmarks/engine_start_profile.py [--model M] [--load-format dummy]
        [--dtype D] [--max-model-len N] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))


def profiled(name: str, fn: Callable[[], Any], top: int, times: list[tuple[str, float]]) -> Any:
    """Run ``fn`` under cProfile; print its time and its ``top`` functions by cumulative
    time; note the time in ``times``."""
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    result = fn()
    profile.disable()
    times.append((name, time.perf_counter() - start))
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(top)
    print(f"===== {name}: {times[-1][1]:.2f} s\n{out.getvalue()}", flush=True)
    return result


def import_engine_modules() -> Any:
    import pagedllm.engine.core_proc as core_proc

    core_proc._import_config_modules()
    return core_proc


def start_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.get_device_properties(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    times: list[tuple[str, float]] = []
    core_proc = profiled("imports", import_engine_modules, args.top, times)
    profiled("CUDA's start", start_cuda, args.top, times)
    from pagedllm.config import EngineArgs, UsageContext
    from pagedllm.engine.engine_process import EngineArguments

    engine_args = EngineArgs(
        model=args.model, load_format=args.load_format, dtype=args.dtype,
        max_model_len=args.max_model_len, skip_tokenizer_init=True, seed=0,
    )  # fmt: skip
    arguments = EngineArguments(engine_args, UsageContext.LLM_CLASS)
    config = profiled("configuration", arguments.build, args.top, times)
    core = profiled("engine core", lambda: core_proc.build_core(config), args.top, times)
    if isinstance(core, Exception):
        raise core
    print("stages: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times))
    core.shutdown()


if __name__ == "__main__":
    main()
