"""n samples of one long prompt against a running server: how long the request takes, and
how many prompt tokens the server computed for it (the scheduler's twins rule).

    python benchmarks/twin_prompts.py http://localhost:8000 [--n 4] [--tokens 2000]

Each repeat sends one ``/v1/completions`` of ``--tokens`` random token ids (a new seed per
repeat, so no repeat hits another's cache) with ``n`` samples of 16 tokens, and reads the
prefix-cache counters of ``/metrics`` before and after: the prompt tokens computed are the
ones queried less the ones found.
"""

from __future__ import annotations

import argparse
import random
import re
import time

import httpx

OUTPUT_TOKENS = 16


def cache_counters(url: str) -> tuple[float, float]:
    """(prefix-cache tokens queried, tokens found) since the server started."""
    text = httpx.get(f"{url}/metrics", timeout=30).text

    def total(name: str) -> float:
        pattern = rf"^pagedllm:{name}_total(?:{{[^}}]*}})? (\S+)$"
        return sum(float(v) for v in re.findall(pattern, text, re.M))

    return total("prefix_cache_queries"), total("prefix_cache_hits")


def one_request(url: str, model: str, prompt: list[int], n: int) -> tuple[float, float]:
    """Seconds until the n samples came back, and the prompt tokens computed for them."""
    queries, hits = cache_counters(url)
    started = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": OUTPUT_TOKENS, "ignore_eos": True,
            "n": n, "temperature": 1.0, "seed": 0}  # fmt: skip
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    seconds = time.perf_counter() - started
    queries_after, hits_after = cache_counters(url)
    return seconds, (queries_after - queries) - (hits_after - hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="prompts not sent before")
    args = parser.parse_args()
    model = httpx.get(f"{args.url}/v1/models", timeout=30).json()["data"][0]["id"]
    for repeat in range(args.repeats):
        rng = random.Random(args.first_seed + repeat)
        prompt = [rng.randrange(100, 20_000) for _ in range(args.tokens)]
        seconds, computed = one_request(args.url, model, prompt, args.n)
        print(f"repeat {repeat}: n={args.n} x {args.tokens} prompt tokens: {seconds:.2f} s, "
              f"{computed:.0f} prompt tokens computed", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
