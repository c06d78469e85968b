"""FP8 quality on the bundled SmolLM2-135M (float32 reference, CPU), teacher-forced over
a fixed 512-token text: top-1 agreement with the reference and perplexity rise.

    python benchmarks/fp8_quality.py [--no-record]

Rows: FP8 weights (online, per output channel), FP8 KV cache (scales 1.0 and calculated),
both; bfloat16 weights and activations as the yardstick of how many positions any small
perturbation flips on this model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
os.environ.setdefault("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")

from record import append_record, device_name

from tests.model.teacher_forcing import score

CONFIGS = [
    ("FP8 weights (quantization=fp8)", {"quantization": "fp8"}),
    ("FP8 KV cache, scales 1.0", {"kv_cache_dtype": "fp8"}),
    ("FP8 KV cache, calculate_kv_scales", {"kv_cache_dtype": "fp8", "calculate_kv_scales": True}),
    ("FP8 weights + FP8 KV cache", {"quantization": "fp8", "kv_cache_dtype": "fp8"}),
    ("bfloat16 (yardstick)", {"dtype": "bfloat16"}),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    reference = score()
    lines = [
        f"reference (float32): perplexity {reference.perplexity:.3f}",
        "",
        "| configuration | top-1 agreement | perplexity | rise |",
        "|---|---|---|---|",
    ]
    for name, kwargs in CONFIGS:
        got = score(**kwargs)
        lines.append(
            f"| {name} | {got.agreement(reference):.1%} | {got.perplexity:.3f} | "
            f"{got.perplexity_rise(reference):+.2%} |"
        )
    print("\n".join(lines))
    if not args.no_record:
        append_record(
            "FP8 quality on SmolLM2-135M", device_name(),
            "bundled SmolLM2-135M-Instruct, float32 on the CPU, teacher-forced over "
            "tests/model/data/quality_text.txt (512 tokens, 511 scored positions)", lines,
        )  # fmt: skip


if __name__ == "__main__":
    main()
