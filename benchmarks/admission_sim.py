"""The scheduler alone on request mixes, admitting by forecast or freely: steps, preemptions,
tokens computed, and the run's time under a cost model of llama-3.1-8b on an H100.

No model runs: every scheduled request that reaches its end samples a token, which ends it
by length (``ignore_eos`` mixes) or, for chat mixes, by eos at a drawn reply length. The
cost model (step time = 0.4 ms + the larger of the weights' read and the GEMMs' FLOPs, plus
decode attention's KV read) predicted 29.97 s for W2 where the H100 measured 30.4 s.

    python benchmarks/admission_sim.py                     # forecast on and off, each mix
    python benchmarks/admission_sim.py --horizons 0,16,64  # OPEN_HORIZON candidates too
    python benchmarks/admission_sim.py --rate 40           # arrivals (Poisson, req/s of the
                                                           # model's clock): TTFT too
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pagedllm.core import admission
from pagedllm.core.scheduler_output import ModelRunnerOutput
from tests.unit.core_helpers import make_request, make_scheduler

EOS = 2
WEIGHT_READ_S = 16e9 / 3.0e12  # llama-3.1-8b's bf16 weights at an H100's copy rate
FLOP_PER_TOKEN, GEMM_FLOP_S = 16e9, 650e12
KV_BYTES_PER_TOKEN, KV_READ_B_S = 131072, 2.9e12


def w2() -> tuple[list, dict | None]:
    rng = random.Random(0)
    return [
        make_request(f"r{i}", [rng.randrange(100, 30000) for _ in range(512)], 256,
                     eos=None, ignore_eos=True)
        for i in range(1000)
    ], None  # fmt: skip


def w1() -> tuple[list, dict | None]:
    rng = random.Random(2)
    requests = []
    for i in range(256):
        prompt, out = rng.randint(100, 1024), rng.randint(100, 1024)
        tokens = [rng.randrange(100, 30000) for _ in range(prompt)]
        requests.append(make_request(f"w{i}", tokens, out, eos=None, ignore_eos=True))
    return requests, None


def chat(n: int) -> tuple[list, dict | None]:
    """Log-normal prompts (median ~250) and replies (median ~200) under max_tokens 2048."""
    rng = random.Random(1)
    requests, reply_len = [], {}
    for i in range(n):
        prompt = min(int(rng.lognormvariate(5.5, 0.8)) + 10, 2000)
        tokens = [rng.randrange(100, 30000) for _ in range(prompt)]
        requests.append(make_request(f"c{i}", tokens, 2048, eos=EOS))
        reply_len[f"c{i}"] = int(rng.lognormvariate(5.3, 0.8)) + 5
    return requests, reply_len


MIXES = {  # name: (blocks of 16 tokens, requests)
    "W2@25k": (25182, w2),
    "W1@8k": (8000, w1),
    "W1@14k": (14000, w1),
    "chat@8k": (8000, lambda: chat(1000)),
    "chat@2k": (2000, lambda: chat(400)),
}


def run(blocks: int, requests: list, reply_len: dict | None, rate: float = 0.0) -> dict:
    """All requests at once (``rate`` 0), or arriving at ``rate`` per second (Poisson)."""
    s = make_scheduler(blocks, 16, max_num_seqs=1024, max_num_batched_tokens=16384)
    rng, clock = random.Random(3), 0.0
    arrivals = []
    for r in requests:
        clock += rng.expovariate(rate) if rate else 0.0
        arrivals.append((clock, r))
    arrivals.reverse()  # popped from the end, earliest first
    arrived, first = {}, {}
    steps, seconds, batches, out_tokens = 0, 0.0, [], 0
    while arrivals or s.has_unfinished_requests():
        if not s.has_unfinished_requests():
            seconds = max(seconds, arrivals[-1][0])
        while arrivals and arrivals[-1][0] <= seconds:
            at, r = arrivals.pop()
            arrived[r.request_id] = at
            s.add_request(r)
        so = s.schedule()
        order = [r.req_id for r in so.scheduled_new_reqs]
        order += [r.req_id for r in so.scheduled_cached_reqs]
        sampled, tokens, context = [], 0, 0
        for rid in order:
            r, k = s.requests[rid], so.num_scheduled_tokens[rid]
            tokens += k
            context += r.num_computed_tokens if k == 1 else 0
            if r.num_computed_tokens < r.num_tokens:
                sampled.append([])
                continue
            ends = reply_len is not None and len(r.output_token_ids) + 1 >= reply_len[rid]
            sampled.append([EOS if ends else 1000 + steps % 50000])
            out_tokens += 1
        batches.append(len(order))
        gemm = max(WEIGHT_READ_S, tokens * FLOP_PER_TOKEN / GEMM_FLOP_S)
        seconds += 4e-4 + gemm + context * KV_BYTES_PER_TOKEN / KV_READ_B_S
        for rid, token in zip(order, sampled):
            if token and rid not in first:
                first[rid] = seconds - arrived[rid]
        s.update_from_output(so, ModelRunnerOutput(req_ids=order, sampled_token_ids=sampled))
        steps += 1
    ttft = sorted(first.values())
    return {"steps": steps, "preemptions": s.num_preemptions, "tok_s": out_tokens / seconds,
            "batch": statistics.mean(batches), "ttft_median": statistics.median(ttft),
            "ttft_p99": ttft[int(0.99 * (len(ttft) - 1))]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", default=str(admission.OPEN_HORIZON),
                        help="OPEN_HORIZON values to try, comma-separated")  # fmt: skip
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests per second (Poisson); 0: all at once")  # fmt: skip
    args = parser.parse_args()
    if args.rate < 0:
        raise SystemExit(f"--rate must be at least 0, got {args.rate}")
    settings = [("free", None)] + [("forecast", int(h)) for h in args.horizons.split(",")]
    print("| admission | " + " | ".join(MIXES) + " |")
    print("|---" * (len(MIXES) + 1) + "|")
    for name, horizon in settings:
        os.environ["PAGEDLLM_ADMISSION_FORECAST"] = "0" if horizon is None else "1"
        if horizon is not None:
            admission.OPEN_HORIZON = horizon
        start, cells = time.perf_counter(), []
        for blocks, mix in MIXES.values():
            result = run(blocks, *mix(), rate=args.rate)
            cell = f"{result['tok_s']:,.0f} tok/s ({result['preemptions']} p.)"
            if args.rate:
                cell += f", TTFT {result['ttft_median']:.2f} / {result['ttft_p99']:.2f} s"
            cells.append(cell)
        label = name if horizon is None else f"{name}, horizon {horizon}"
        print(f"| {label} | " + " | ".join(cells) + f" |  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
