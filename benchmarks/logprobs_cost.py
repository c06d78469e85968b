"""The raw-logprobs computation alone: the fused CUDA kernel against the torch path
(float32 logsumexp, rank count, ``torch.topk``) on [256, 151,936] bfloat16 logits, as a
qwen3 decode step of 256 requests hands them over.

    python benchmarks/logprobs_cost.py [--record]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from pagedllm.kernels.logprobs import fused_logprobs  # noqa: E402
from pagedllm.sample.logprobs import logprobs_from_lse  # noqa: E402


def device_us(fn: Callable[[], object], number: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(256, 151936, device="cuda", generator=g) * 4).bfloat16()
    chosen = torch.randint(0, 151936, (256,), device="cuda", generator=g)
    rows = ["| logprobs (k) | torch path | fused kernel |", "|---|---|---|"]
    for k in (5, 20):
        torch_us = device_us(
            lambda k=k: logprobs_from_lse(logits, torch.logsumexp(logits.float(), -1), chosen, k)
        )
        fused_us = device_us(lambda k=k: fused_logprobs(logits, chosen, k))
        rows.append(f"| {k} | {torch_us:.0f} µs | {fused_us:.0f} µs |")
    print("\n".join(rows))
    if args.record:
        from record import append_record, device_name

        workload = ("[256, 151,936] bfloat16 random logits (x4), random sampled ids; torch "
                    "path = float32 logsumexp + rank count + torch.topk on the logits; "
                    "wall time per call, synchronised, mean of 50")  # fmt: skip
        append_record("Raw logprobs cost", device_name(), workload, rows)


if __name__ == "__main__":
    main()
