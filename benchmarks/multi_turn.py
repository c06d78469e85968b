"""Multi-turn chat with and without prefix caching: time to first token per turn.

C conversations x T turns over one shared S-token system prompt. Each turn resends the
whole history plus a new user message (as chat clients do); with the prefix cache only the
new part is computed. The C requests of a turn are submitted together. Prompts are token ids
(random, seeded), so the same script runs a real model or dummy weights.

    python benchmarks/multi_turn.py                                  # CPU, bundled SmolLM2
    python benchmarks/multi_turn.py --model ../shared/model-configs/qwen3-0.6b --load-format dummy

--swap (issue 20) measures the host tier instead: many conversations of 8 turns, a device KV
cache sized to a fraction (--device-fraction, 20%) of the conversations' distinct history, and
the same run with and without --swap-space (sized to hold the whole history). Users take
their turns round robin, one request at a time (--together: a turn's requests at once, where
TTFT is mostly queueing behind the others' decodes, since the small cache admits few at a
time): between two turns of a user the others' turns have evicted its blocks from the device.
Reported: the median TTFT of the later turns (3 on) with the tier against without;
--repeats N runs the pair N times and reports each pair's ratio and their median (the ratio
moves by ~0.05 from run to run on an H200).

    python benchmarks/multi_turn.py --swap                           # CPU, bundled SmolLM2
    python benchmarks/multi_turn.py --swap --model tiny              # CPU, 4-layer dummy Llama
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from record import append_record, device_name

from pagedllm import LLM, RequestOutputKind, SamplingParams
from pagedllm.config import EngineArgs

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
    per_turn, prompt_tokens, cached = converse(llm, args)
    return [statistics.mean(t) for t in per_turn], cached / max(prompt_tokens, 1)


def converse(llm: LLM, args: argparse.Namespace) -> tuple[list[list[float]], int, int]:
    """Every request's TTFT (seconds), per turn; the prompt tokens of the run, and those the
    prefix cache served (as each request's output reports them: the engine's own counters
    are taken by its per-step snapshot)."""
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
    ttfts = []
    prompt_tokens = cached = 0
    for turn in range(args.turns):
        start, first = {}, {}
        replies: dict[str, list[int]] = {}
        for c, history in enumerate(histories):
            history += [rng.randrange(100, vocab) for _ in range(args.user_len)]
            rid = f"t{turn}-c{c}"
            start[rid] = time.perf_counter()
            engine.add_request(rid, {"prompt_token_ids": list(history)}, params)
            prompt_tokens += len(history)
            replies[rid] = []
            if getattr(args, "one_at_a_time", False):
                cached += drain(engine, first, replies)
        cached += drain(engine, first, replies)
        for c, history in enumerate(histories):
            history += replies[f"t{turn}-c{c}"]
        ttfts.append([first[r] - start[r] for r in start])
    return ttfts, prompt_tokens, cached


def drain(engine, first: dict[str, float], replies: dict[str, list[int]]) -> int:
    """Step until every request is done, noting first-token times; returns the prompt
    tokens the prefix cache served to the requests that started."""
    cached = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id not in first:
                first[out.request_id] = time.perf_counter()
                cached += out.num_cached_tokens
            replies[out.request_id] += out.outputs[0].token_ids
    return cached


def history_tokens(args: argparse.Namespace) -> int:
    """Distinct tokens of all conversations after the last turn (the system prompt once)."""
    return args.system_len + args.conversations * args.turns * (args.user_len + args.reply_len)


def tiny_model(directory: str) -> str:
    """A 4-layer Llama config (dummy weights): the CPU then measures the tier with prefill
    costs of a real transformer's shape in seconds, where SmolLM2 takes minutes."""
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"],
    ).save_pretrained(directory)  # fmt: skip
    return directory


def run_swap(args: argparse.Namespace, swap_space: float, device_bytes: int) -> dict:
    llm = LLM(
        model=args.model,
        load_format=args.load_format,
        skip_tokenizer_init=True,
        max_model_len=args.max_model_len,
        kv_cache_memory_bytes=device_bytes,
        swap_space=swap_space,
        seed=0,
    )
    per_turn, prompt_tokens, cached = converse(llm, args)
    later = [t for turn in per_turn[2:] for t in turn]
    tier = llm.llm_engine.engine_core.kv_cache_manager.host_tier
    result = {
        "per_turn": [statistics.median(t) for t in per_turn],
        "later_median": statistics.median(later),
        "hit_rate": cached / max(prompt_tokens, 1),
        "saved": tier.num_saved if tier else 0,
        "saved_ahead": tier.num_saved_ahead if tier else 0,
        "loaded": tier.num_loaded if tier else 0,
        "computed": prompt_tokens - cached,
    }
    llm.llm_engine.shutdown()
    return result


def swap_main(args: argparse.Namespace) -> None:
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    if args.model == "tiny":
        args.model = tiny_model(tempfile.mkdtemp(prefix="tiny-llama-"))
        args.load_format = "dummy"
        args.model_label = "tiny Llama (4 layers, hidden 256, 2 KV heads; dummy weights)"
    config = EngineArgs(
        model=args.model, load_format=args.load_format, skip_tokenizer_init=True,
        max_model_len=args.max_model_len, kv_cache_memory_bytes=1 << 30,
    ).create_engine_config()  # fmt: skip
    block = config.cache_config.block_size
    per_token = config.model_config.kv_bytes_per_token(config.cache_config.cache_dtype)
    history = history_tokens(args)
    # The fraction of the history, but never less than one request of max_model_len.
    device_tokens = max(int(args.device_fraction * history), args.max_model_len)
    device_tokens = -(-device_tokens // block) * block
    swap_space = 1.25 * (history + args.conversations * block) * per_token / (1 << 30)
    pairs = []
    for _ in range(args.repeats):  # without, then with the tier, again: run-to-run spread
        pairs.append((run_swap(args, 0, device_tokens * per_token),
                      run_swap(args, swap_space, device_tokens * per_token)))  # fmt: skip
    plain, tiered = pairs[-1]
    rows = [
        f"device KV cache: {device_tokens} tokens = {device_tokens / history:.0%} of the "
        f"{history}-token history; swap space {swap_space:.3f} GiB (the whole history)",
        "",
        "| turn | median TTFT, no tier (ms) | median TTFT, tier (ms) | tier / no tier |",
        "|---|---|---|---|",
    ]
    rows += [
        f"| {t + 1} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f}x |"
        for t, (a, b) in enumerate(zip(plain["per_turn"], tiered["per_turn"]))
    ]
    ratios = [t["later_median"] / p["later_median"] for p, t in pairs]
    rows += [
        "",
        f"later turns (3-{args.turns}), median TTFT: {plain['later_median'] * 1e3:.1f} ms "
        f"without the tier, {tiered['later_median'] * 1e3:.1f} ms with it: {ratios[-1]:.3f}x "
        "(target <= 0.3x)",
        f"prompt tokens computed: {plain['computed']} without, {tiered['computed']} with; "
        f"prefix-cache hit rate {plain['hit_rate']:.1%} without, {tiered['hit_rate']:.1%} "
        f"with (host tier: {tiered['saved']} blocks saved, {tiered['saved_ahead']} of them "
        f"ahead; {tiered['loaded']} copied back)",
    ]
    if len(pairs) > 1:
        each = ", ".join(f"{r:.3f}x" for r in ratios)
        rows.append(f"later-turn ratio of each of the {len(pairs)} pairs (the table: the last "
                    f"pair): {each}; median {statistics.median(ratios):.3f}x")  # fmt: skip
    print("\n".join(rows))
    if not args.no_record:
        model = args.model or "HuggingFaceTB/SmolLM2-135M-Instruct (bundled GGUF)"
        label = getattr(args, "model_label", None) or (Path(model).name if args.model else model)
        workload = (
            f"{label}, load_format={args.load_format}: "
            f"{args.conversations} conversations x {args.turns} turns, {args.system_len}-token "
            f"shared system prompt, {args.user_len}-token user turns, {args.reply_len}-token "
            "replies, greedy; TTFT per request; "
            + (
                "users take turns one at a time (round robin)"
                if args.one_at_a_time
                else "each turn's requests submitted together"
            )
        )
        append_record("Multi-turn with the host KV tier (swap_space)", device_name(), workload,
                      rows)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="default: the bundled SmolLM2; with --swap, 'tiny' too"
    )
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--system-len", type=int, default=2000)
    parser.add_argument("--user-len", type=int, default=32)
    parser.add_argument("--reply-len", type=int, default=48)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-cache-memory-bytes", default=None)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--swap", action="store_true", help="measure the host KV tier")
    parser.add_argument("--device-fraction", type=float, default=0.2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="--swap: runs without and with the tier, N times"
    )
    parser.add_argument(
        "--together",
        dest="one_at_a_time",
        action="store_false",
        help="--swap: submit a turn's requests together (default: one user at a time, each "
        "after the previous one's reply, so TTFT is the request's own prefill)",
    )
    if parser.parse_known_args()[0].swap:  # issue 20's workload: many users, 8 turns
        parser.set_defaults(
            conversations=16, turns=8, system_len=512, reply_len=16, max_model_len=1024
        )
    args = parser.parse_args()
    if args.swap:
        swap_main(args)
        return
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
