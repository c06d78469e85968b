"""What one step's outputs cost to cross from the engine process to the front end.

    python benchmarks/message_codec.py [--requests 256] [--logprobs 5] [--no-record]

Encodes and decodes one ``EngineCoreOutputs`` (one new token per request, optionally with
top-k logprobs) with the engine's msgspec codec, and with pickle for comparison.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from record import append_record, device_name

from pagedllm.core.scheduler_output import EngineCoreOutput, LogprobsLists
from pagedllm.engine.messages import Codec, EngineCoreOutputs
from pagedllm.metrics.stats import EngineSnapshot, IterationStats


def batch(requests: int, k: int) -> EngineCoreOutputs:
    def logprobs(i: int) -> LogprobsLists | None:
        if not k:
            return None
        return LogprobsLists([[i, *range(k)]], [[-0.5] * (k + 1)], [1])

    outputs = [
        EngineCoreOutput(f"cmpl-{i:032x}-0", [1000 + i], new_logprobs=logprobs(i))
        for i in range(requests)
    ]
    return EngineCoreOutputs(
        outputs, IterationStats(0, requests), EngineSnapshot(requests, 0, 0.5, 0, 0)
    )


def timed(fn, repeat: int = 300) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--logprobs", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    codec = Codec()
    rows = ["| outputs | logprobs | msgspec bytes | msgspec µs | pickle bytes | pickle µs |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for k in (0, args.logprobs):
        message = batch(args.requests, k)
        frames = codec.encode(message)
        size = sum(len(f) for f in frames)
        ours = timed(lambda m=message: codec.decode(codec.encode(m)))
        pickled = pickle.dumps(message)
        theirs = timed(lambda m=message: pickle.loads(pickle.dumps(m)))
        rows.append(f"| {args.requests} | {k} | {size:,} | {ours:.0f} | {len(pickled):,} "
                    f"| {theirs:.0f} |")  # fmt: skip
    print("\n".join(rows))
    if not args.no_record:
        workload = (
            "one step's EngineCoreOutputs, encoded and decoded (round trip): one token per "
            "request, 32-hex request ids"
        )
        append_record("Engine -> front-end message cost", device_name(), workload, rows)


if __name__ == "__main__":
    main()
