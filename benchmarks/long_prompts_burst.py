"""A burst of long prompts against a running server: how long the burst and each request take.

    python benchmarks/long_prompts_burst.py http://localhost:8000 [--prompts 16] [--tokens 1000]

Sends ``--prompts`` concurrent ``/v1/completions`` of ``--tokens`` random token ids each
(seeded: the same ids every run), 16 tokens out with ``ignore_eos``, and prints the burst's
wall time, its token rates and the requests' median and worst latency (the record "Prompt
chunks sized by the step's measured time" in RESULTS.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import statistics
import time

import httpx

OUTPUT_TOKENS = 16


def one_request(url: str, model: str, prompt: list[int]) -> float:
    """Seconds until the completion of ``prompt`` came back (a 200, or the run fails)."""
    started = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": OUTPUT_TOKENS, "ignore_eos": True,
            "temperature": 0}  # fmt: skip
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(0)
    model = httpx.get(f"{args.url}/v1/models").json()["data"][0]["id"]
    prompts = [[rng.randrange(100, 40_000) for _ in range(args.tokens)]
               for _ in range(args.prompts)]  # fmt: skip
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.prompts) as pool:
        latencies = sorted(pool.map(lambda p: one_request(args.url, model, p), prompts))
    wall = time.perf_counter() - started
    output = args.prompts * OUTPUT_TOKENS
    total = args.prompts * (args.tokens + OUTPUT_TOKENS)
    median, worst = statistics.median(latencies), latencies[-1]
    print(f"wall {wall:.1f} s, output {output / wall:.1f} tok/s, total {total / wall:.0f} tok/s; "
          f"latency median {median:.1f} s, worst {worst:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
