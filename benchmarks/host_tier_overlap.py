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


def ttft(llm: LLM, history: int, new: int, rng: random.Random, vocab: int) -> float:
    """Seconds to the first token of a ``history + new``-token prompt whose first
    ``history`` tokens were computed before and then evicted from the device cache."""
    tokens = [rng.randrange(100, vocab) for _ in range(history + new)]
    llm.generate({"prompt_token_ids": tokens[:history]}, ONE, use_tqdm=False)
    flood = [
        {"prompt_token_ids": [rng.randrange(100, vocab) for _ in range(1024)]}
        for _ in range(llm.llm_engine.engine_core.kv_cache_manager.num_blocks // 64 + 2)
    ]
    llm.generate(flood, ONE, use_tqdm=False)  # every block of the history evicted
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


def median_ttft(llm: LLM, args: argparse.Namespace, history: int, seed: int) -> float:
    rng = random.Random(seed)
    vocab = min(llm.llm_engine.model_config.vocab_size, 30000)
    return statistics.median(ttft(llm, history, args.new, rng, vocab) for _ in range(args.trials))


def kernel_summary(llm: LLM, args: argparse.Namespace, history: int) -> str:
    """The torch profiler's per-kernel table of one layer-by-layer tier step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    rng = random.Random(7)
    vocab = min(llm.llm_engine.model_config.vocab_size, 30000)
    ttft(llm, history, args.new, rng, vocab)  # warm
    with profile(activities=activities) as prof:
        ttft(llm, history, args.new, rng, vocab)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


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
    args = parser.parse_args()
    if args.model == "tiny":
        args.model = tiny_model(tempfile.mkdtemp(prefix="tiny-llama-"))
        args.device_mib, args.swap_gib = 64, 0.25
    histories = [int(h) for h in args.histories.split(",")]
    rows = [
        "| history | layer by layer | wait for all | no tier (recompute) |",
        "|---|---|---|---|",
    ]
    results: dict[str, list[float]] = {"layers": [], "all": [], "none": []}
    llm = build(args, tier=True)
    for i, history in enumerate(histories):
        results["layers"].append(median_ttft(llm, args, history, seed=i))
        with waiting_for_all():
            results["all"].append(median_ttft(llm, args, history, seed=100 + i))
    summary = "" if args.no_profile else kernel_summary(llm, args, histories[-1])
    llm.llm_engine.shutdown()
    plain = build(args, tier=False)
    results["none"] = [median_ttft(plain, args, h, seed=200 + i) for i, h in enumerate(histories)]
    plain.llm_engine.shutdown()
    for i, history in enumerate(histories):
        cells = " | ".join(f"{results[k][i] * 1e3:.1f} ms" for k in ("layers", "all", "none"))
        rows.append(f"| {history} | {cells} |")
    print(f"median TTFT of {args.trials} trials, {args.new} new tokens after the history")
    print("\n".join(rows))
    if summary:
        print(f"\nkernels of one layer-by-layer step (history {histories[-1]}):\n{summary}")


if __name__ == "__main__":
    main()
