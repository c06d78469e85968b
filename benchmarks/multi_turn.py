"""Multi-turn chat with and without prefix caching: time to first token per turn.

C conversations x T turns over one shared S-token system prompt. Each turn resends the
whole history plus a new user message (as chat clients do); with the prefix cache only the
new part is computed. The C requests of a turn are submitted together. Prompts are token ids
(random, seeded), so the same script runs a real model or dummy weights.

    python benchmarks/multi_turn.py                                  # CPU, bundled SmolLM2
    python benchmarks/multi_turn.py --model ../shared/model-configs/qwen3-0.6b --load-format dummy
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from record import append_record, device_name

from pagedllm import LLM, RequestOutputKind, SamplingParams

# This benchmark reads the engine core's internals: the core runs in this process.
os.environ.setdefault("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")


def run(args: argparse.Namespace, caching: bool) -> tuple[list[float], float]:
    """Mean TTFT (seconds) per turn, and the prefix-cache hit rate over all turns."""
    llm = LLM(
        model=args.model,
        load_format=args.load_format,
        skip_tokenizer_init=True,
        enable_prefix_caching=caching,
        max_model_len=args.max_model_len,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        seed=0,
    )
    engine = llm.llm_engine
    vocab = min(engine.model_config.vocab_size, 30000)
    rng = random.Random(0)
    system = [rng.randrange(100, vocab) for _ in range(args.system_len)]
    histories = [list(system) for _ in range(args.conversations)]
    params = SamplingParams(
        temperature=0.0,
        max_tokens=args.reply_len,
        ignore_eos=True,
        detokenize=False,
        output_kind=RequestOutputKind.DELTA,
    )
    warm = {"prompt_token_ids": [rng.randrange(100, vocab) for _ in range(64)]}
    llm.generate(warm, SamplingParams(max_tokens=4, detokenize=False), use_tqdm=False)
    llm.reset_prefix_cache()
    stats = engine.engine_core.kv_cache_manager.prefix_cache_stats
    stats.take()
    ttfts = []
    for turn in range(args.turns):
        start, first = {}, {}
        for c, history in enumerate(histories):
            history += [rng.randrange(100, vocab) for _ in range(args.user_len)]
            rid = f"t{turn}-c{c}"
            start[rid] = time.perf_counter()
            engine.add_request(rid, {"prompt_token_ids": list(history)}, params)
        replies: dict[str, list[int]] = {rid: [] for rid in start}
        while engine.has_unfinished_requests():
            for out in engine.step():
                first.setdefault(out.request_id, time.perf_counter())
                replies[out.request_id] += out.outputs[0].token_ids
        for c, history in enumerate(histories):
            history += replies[f"t{turn}-c{c}"]
        ttfts.append(statistics.mean(first[r] - start[r] for r in start))
    totals = stats.take()
    return ttfts, totals.hits / max(totals.queries, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--system-len", type=int, default=2000)
    parser.add_argument("--user-len", type=int, default=32)
    parser.add_argument("--reply-len", type=int, default=48)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-cache-memory-bytes", default=None)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    on, hit_rate = run(args, caching=True)
    off, _ = run(args, caching=False)
    rows = ["| turn | TTFT cache on (ms) | TTFT cache off (ms) | on / off |", "|---|---|---|---|"]
    rows += [
        f"| {t + 1} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.1%} |"
        for t, (a, b) in enumerate(zip(on, off))
    ]
    worst = max(a / b for a, b in zip(on[2:], off[2:]))
    rows.append(f"\nprefix-cache hit rate (cache on): {hit_rate:.1%}; from turn 3 on, the worst "
                f"on/off TTFT ratio is {worst:.1%} (bar: at most 20%)")  # fmt: skip
    print("\n".join(rows))
    if not args.no_record:
        model = args.model or "HuggingFaceTB/SmolLM2-135M-Instruct (bundled GGUF)"
        workload = (
            f"{Path(model).name if args.model else model}, load_format={args.load_format}: "
            f"{args.conversations} conversations x {args.turns} turns, {args.system_len}-token "
            f"shared system prompt, {args.user_len}-token user turns, {args.reply_len}-token "
            "replies, greedy; TTFT = mean over the turn's requests, submitted together"
        )
        append_record("Multi-turn prefix caching", device_name(), workload, rows)


if __name__ == "__main__":
    main()
