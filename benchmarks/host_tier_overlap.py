"""Whether the host tier's copy back hides behind the forward pass (issue 20): TTFT of a
request whose history comes back from the tier, with each layer waiting for its own blocks
(as built), with every layer waiting for all of them (the copy first, then the forward pass),
and with the history recomputed (no tier), by history length; then a kernel summary of one
layer-by-layer step.

    python benchmarks/host_tier_overlap.py --model benchmarks/model-configs/llama-3.1-8b-instruct
    python benchmarks/host_tier_overlap.py --model tiny           # CPU: the script's own check

Each trial builds a fresh history (random tokens), pushes it out of the device cache with
other prompts, then asks for it again with ``--new`` more tokens and one output token. The
"wait for all" variant patches ``LayerLoads.wait`` in this process (the benchmark's
comparison, not an engine option).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from multi_turn import tiny_model

from pagedllm import LLM, SamplingParams
from pagedllm.worker.host_kv_cache import LayerLoads

# The engine core must run in this process: the variants patch it.
os.environ.setdefault("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")

ONE = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)


def build(args: argparse.Namespace, tier: bool) -> LLM:
    return LLM(
        model=args.model, load_format=args.load_format, skip_tokenizer_init=True,
        max_model_len=args.max_model_len, seed=0,
        kv_cache_memory_bytes=f"{args.device_mib}M", swap_space=args.swap_gib if tier else 0,
    )  # fmt: skip


def ttft(
    llm: LLM,
    history: int,
    new: int,
    rng: random.Random,
    vocab: int,
    *,
    evict: bool = True,
    timed: Callable[[], Any] = contextlib.nullcontext,
) -> float:
    """Seconds to the first token of a ``history + new``-token prompt whose first
    ``history`` tokens were computed before and then (``evict``) evicted from the device
    cache; without ``evict`` they are still there (the floor: only the new tokens computed).
    ``timed`` wraps the timed request alone (a profiler)."""
    tokens = [rng.randrange(100, vocab) for _ in range(history + new)]
    llm.generate({"prompt_token_ids": tokens[:history]}, ONE, use_tqdm=False)
    if evict:
        flood = [
            {"prompt_token_ids": [rng.randrange(100, vocab) for _ in range(1024)]}
            for _ in range(llm.llm_engine.engine_core.kv_cache_manager.num_blocks // 64 + 2)
        ]
        llm.generate(flood, ONE, use_tqdm=False)  # every block of the history evicted
    with timed():
        start = time.perf_counter()
        llm.generate({"prompt_token_ids": tokens}, ONE, use_tqdm=False)
        return time.perf_counter() - start


def _wait_for_all_once(loads: LayerLoads, layer_idx: int) -> None:
    """The first layer's wait waits for every layer's blocks; the others have nothing left."""
    if not getattr(loads, "all_waited", False):
        loads.wait_all()
        loads.all_waited = True  # type: ignore[attr-defined]


@contextmanager
def waiting_for_all() -> Any:
    """The step's first layer waits for every layer's blocks (the copy, then the pass)."""
    original: Callable[[LayerLoads, int], None] = LayerLoads.wait
    LayerLoads.wait = _wait_for_all_once  # type: ignore[method-assign]
    try:
        yield
    finally:
        LayerLoads.wait = original  # type: ignore[method-assign]


@contextmanager
def load_programs(count: int) -> Any:
    """Swap-ins copied by ``count`` programs instead of the engine's number."""
    from pagedllm.worker import host_kv_cache

    original = host_kv_cache._LOAD_PROGRAMS
    host_kv_cache._LOAD_PROGRAMS = count
    try:
        yield
    finally:
        host_kv_cache._LOAD_PROGRAMS = original


def median_ttft(
    llm: LLM, args: argparse.Namespace, history: int, seed: int, evict: bool = True
) -> float:
    rng = random.Random(seed)
    vocab = min(llm.llm_engine.model_config.vocab_size, 30000)
    trials = [ttft(llm, history, args.new, rng, vocab, evict=evict) for _ in range(args.trials)]
    return statistics.median(trials)


def kernel_summary(llm: LLM, args: argparse.Namespace, history: int, evict: bool = True) -> str:
    """The torch profiler's per-kernel table of the timed request of one layer-by-layer
    trial (``evict=False``: of one with its history still on the device, the floor), its
    time to the first token under the profiler, and when each stream's kernels ran (the
    trace goes to ``--trace``, ``-floor`` added before its suffix for the floor)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    rng = random.Random(7)
    vocab = min(llm.llm_engine.model_config.vocab_size, 30000)
    ttft(llm, history, args.new, rng, vocab, evict=evict)  # warm
    prof = profile(activities=activities)
    wall = ttft(llm, history, args.new, rng, vocab, evict=evict, timed=lambda: prof)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=15)
    table += f"\nTTFT under the profiler: {wall * 1e3:.2f} ms"
    if not torch.cuda.is_available():
        return table
    root, suffix = os.path.splitext(args.trace)
    trace = args.trace if evict else f"{root}-floor{suffix}"
    prof.export_chrome_trace(trace)
    return table + "\n" + stream_summary(trace)


def stream_summary(trace_path: str) -> str:
    """Per stream: its kernels' first start and last end (ms from the first kernel), their
    busy time, and the busy time of the three largest kernel names."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    if not kernels:
        return "(no kernels in the trace)"
    t0 = min(e["ts"] for e in kernels)
    lines = [
        "| stream | first start | last end | busy | top kernels (ms) |",
        "|---|---|---|---|---|",
    ]
    streams: dict[int, list[dict]] = {}
    for e in kernels:
        streams.setdefault(e["args"].get("stream", -1), []).append(e)
    for stream, evs in sorted(streams.items()):
        by_name: dict[str, float] = {}
        for e in evs:
            by_name[e["name"][:40]] = by_name.get(e["name"][:40], 0.0) + e["dur"]
        largest = sorted(by_name.items(), key=lambda x: -x[1])[:3]
        top = ", ".join(f"{n} {d / 1e3:.2f}" for n, d in largest)
        start = (min(e["ts"] for e in evs) - t0) / 1e3
        end = (max(e["ts"] + e["dur"] for e in evs) - t0) / 1e3
        busy = sum(e["dur"] for e in evs) / 1e3
        lines.append(f"| {stream} | {start:.2f} | {end:.2f} | {busy:.2f} | {top} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a model path, or 'tiny' (CPU check)")
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--histories", default="1024,3072,5120", help="history lengths")
    parser.add_argument("--new", type=int, default=616, help="new tokens after the history")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--device-mib", type=int, default=2048, help="device KV cache, MiB")
    parser.add_argument("--swap-gib", type=float, default=8.0)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--profile-floor",
        action="store_true",
        help="also profile one request whose history is still on the device",
    )
    parser.add_argument(
        "--trace",
        default=os.path.join(os.environ.get("OUT", "."), "host_tier_step.json"),
        help="the profiled trace",
    )
    parser.add_argument(
        "--programs", default="", help="also: swap-ins by this many programs (comma-separated)"
    )
    args = parser.parse_args()
    if args.model == "tiny":
        args.model = tiny_model(tempfile.mkdtemp(prefix="tiny-llama-"))
        args.device_mib, args.swap_gib = 64, 0.25
    histories = [int(h) for h in args.histories.split(",")]
    programs = [int(p) for p in args.programs.split(",") if p]
    columns = {
        "layers": "layer by layer",
        **{f"p{p}": f"{p} programs" for p in programs},
        "all": "wait for all",
        "resident": "history on the device",
        "none": "no tier (recompute)",
    }
    results: dict[str, list[float]] = {k: [] for k in columns}
    llm = build(args, tier=True)
    for i, history in enumerate(histories):
        results["layers"].append(median_ttft(llm, args, history, seed=i))
        for p in programs:
            with load_programs(p):
                results[f"p{p}"].append(median_ttft(llm, args, history, seed=300 + i))
        with waiting_for_all():
            results["all"].append(median_ttft(llm, args, history, seed=100 + i))
        results["resident"].append(median_ttft(llm, args, history, seed=400 + i, evict=False))
    summary = "" if args.no_profile else kernel_summary(llm, args, histories[-1])
    floor = kernel_summary(llm, args, histories[-1], evict=False) if args.profile_floor else ""
    llm.llm_engine.shutdown()
    plain = build(args, tier=False)
    results["none"] = [median_ttft(plain, args, h, seed=200 + i) for i, h in enumerate(histories)]
    plain.llm_engine.shutdown()
    rows = ["| history | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 1) + "|"]
    for i, history in enumerate(histories):
        cells = " | ".join(f"{results[k][i] * 1e3:.1f} ms" for k in columns)
        rows.append(f"| {history} | {cells} |")
    print(f"median TTFT of {args.trials} trials, {args.new} new tokens after the history")
    print("\n".join(rows))
    if summary:
        print(f"\nthe timed request of one layer-by-layer trial (history {histories[-1]}):")
        print(summary)
    if floor:
        print(f"\none request with its history on the device (history {histories[-1]}):")
        print(floor)


if __name__ == "__main__":
    main()
