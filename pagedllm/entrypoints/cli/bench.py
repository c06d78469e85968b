"""``pagedllm bench throughput`` and ``pagedllm bench latency``, with vLLM's flag names and
report lines, so one command line can be pointed at either engine. ``pagedllm bench serve``,
which measures a running server, lives in ``pagedllm.bench.serve``.

    pagedllm bench throughput --model DIR --load-format dummy --input-len 512 \\
        --output-len 256 --num-prompts 1000
    pagedllm bench latency --model DIR --load-format dummy --input-len 128 --output-len 256 \\
        --batch-size 1
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import numpy as np

from pagedllm.bench.serve import add_serve_parser
from pagedllm.entrypoints.cli.engine_flags import add_engine_flags, engine_args_from


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="Offline throughput and latency benchmarks.")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    throughput = kinds.add_parser("throughput", help="Many requests at once: tokens per second.")
    _common(throughput)
    throughput.add_argument(
        "--num-prompts", "--num_prompts", dest="num_prompts", type=int, default=1000
    )
    throughput.add_argument(
        "--dataset-name",
        "--dataset_name",
        dest="dataset_name",
        default="random",
        choices=["random"],
    )
    throughput.add_argument(
        "--random-range-ratio", "--random_range_ratio", dest="random_range_ratio", type=float,
        default=0.0,
    )  # fmt: skip
    throughput.set_defaults(handler=run_throughput)
    latency = kinds.add_parser("latency", help="One batch, end to end: seconds per request.")
    _common(latency)
    latency.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    latency.add_argument(
        "--num-iters-warmup", "--num_iters_warmup", dest="num_iters_warmup", type=int, default=3
    )
    latency.add_argument("--num-iters", "--num_iters", dest="num_iters", type=int, default=10)
    latency.set_defaults(handler=run_latency)
    add_serve_parser(kinds)  # against a running server: its flags live beside its code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-len", "--input_len", dest="input_len", type=int, default=1024)
    parser.add_argument("--output-len", "--output_len", dest="output_len", type=int, default=128)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--output-json", "--output_json", dest="output_json", default=None)
    add_engine_flags(parser, skip={"disable_log_stats"})


def _engine(args: argparse.Namespace) -> Any:
    from pagedllm import LLM

    engine_args = engine_args_from(args)
    kwargs = {k: v for k, v in vars(engine_args).items() if k != "model"}
    kwargs["disable_log_stats"] = True
    if args.skip_tokenizer_init is None:
        kwargs["skip_tokenizer_init"] = True  # prompts are token ids; nothing is decoded
    return LLM(engine_args.model, **kwargs)


def random_prompts(
    num: int, input_len: int, ratio: float, vocab: int, seed: int
) -> list[list[int]]:
    """vLLM's random dataset: token ids, lengths uniform in input_len x [1 - ratio, 1 + ratio]."""
    rng = random.Random(seed)
    low, high = int(input_len * (1 - ratio)), int(input_len * (1 + ratio))
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(max(low, 1), max(high, 1)))]
            for _ in range(num)]  # fmt: skip


def run_throughput(args: argparse.Namespace) -> int:
    from pagedllm import SamplingParams

    llm = _engine(args)
    vocab = min(llm.llm_engine.model_config.vocab_size, 32000)
    prompts = random_prompts(
        args.num_prompts, args.input_len, args.random_range_ratio, vocab, args.seed or 0
    )
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                            max_tokens=args.output_len, detokenize=False)  # fmt: skip
    llm.generate(
        {"prompt_token_ids": prompts[0]},
        SamplingParams(max_tokens=4, detokenize=False),
        use_tqdm=False,
    )
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(p) for p in prompts)
    output_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    print(
        f"Throughput: {len(prompts) / elapsed:.2f} requests/s, "
        f"{(prompt_tokens + output_tokens) / elapsed:.2f} total tokens/s, "
        f"{output_tokens / elapsed:.2f} output tokens/s"
    )
    print(f"Total num prompt tokens:  {prompt_tokens}")
    print(f"Total num output tokens:  {output_tokens}")
    total = prompt_tokens + output_tokens
    _write_json(args.output_json, {
        "elapsed_time": elapsed, "num_requests": len(prompts), "total_num_tokens": total,
        "requests_per_second": len(prompts) / elapsed, "tokens_per_second": total / elapsed,
        "output_tokens_per_second": output_tokens / elapsed,
    })  # fmt: skip
    return 0


def run_latency(args: argparse.Namespace) -> int:
    from pagedllm import SamplingParams

    llm = _engine(args)
    vocab = min(llm.llm_engine.model_config.vocab_size, 32000)
    prompts = [
        {"prompt_token_ids": p}
        for p in random_prompts(args.batch_size, args.input_len, 0.0, vocab, 0)
    ]
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                            max_tokens=args.output_len, detokenize=False)  # fmt: skip

    def once() -> float:
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    for _ in range(args.num_iters_warmup):
        once()
    latencies = np.array([once() for _ in range(args.num_iters)])
    print(f"Avg latency: {latencies.mean():.6f} seconds")
    percentiles = [10, 25, 50, 75, 90, 99]
    for p, value in zip(percentiles, np.percentile(latencies, percentiles)):
        print(f"{p}% percentile latency: {value:.6f} seconds")
    values = np.percentile(latencies, percentiles).tolist()
    _write_json(args.output_json, {
        "avg_latency": float(latencies.mean()), "latencies": latencies.tolist(),
        "percentiles": dict(zip(map(str, percentiles), values)),
    })  # fmt: skip
    return 0


def _write_json(path: str | None, data: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
