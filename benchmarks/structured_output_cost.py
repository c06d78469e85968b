"""What structured outputs cost per decode step: 64 running requests each held to a JSON
schema, against the same 64 requests unconstrained, on the bundled SmolLM2 (a real
tokenizer is needed to compile grammars). Also timed apart: filling the batch's bitmask on
the host (xgrammar's batch matcher, overlapped with the forward pass on a GPU) and applying
it to the logits. Step times are device-synchronised medians.

    python benchmarks/structured_output_cost.py [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.sample.grammar_mask import apply_grammar_bitmask  # noqa: E402
from pagedllm.sampling_params import StructuredOutputsParams  # noqa: E402

# This benchmark reads the engine core's internals: the core runs in this process.
os.environ.setdefault("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")

BATCH = 64
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.(com|org)$"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "email", "role"],
    "additionalProperties": False,
}
# A long output (20+ people) keeps all 64 requests decoding through the timed steps.
SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "items": PERSON, "minItems": 20}},
    "required": ["people"],
    "additionalProperties": False,
}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def decode_steps(llm: LLM, params: SamplingParams, tag: str, warmup: int, timed_steps: int):
    """Step times of a full 64-request decode batch, and the bitmask fill times seen."""
    engine = llm.llm_engine
    core = engine.engine_core
    tokenizer = llm.get_tokenizer()
    for i in range(BATCH):
        ask = f"List twenty people from team {i} as JSON with name, age, email, role, tags."
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": ask}], tokenize=False, add_generation_prompt=True
        )
        engine.add_request(f"{tag}-{i}", {"prompt": text}, params)
    fills: list[float] = []
    fill = core._grammar_bitmask

    def timed_fill(req_ids: list[str]) -> Any:
        start = time.perf_counter()
        mask = fill(req_ids)
        fills.append(time.perf_counter() - start)
        return mask

    core._grammar_bitmask = timed_fill  # the runner calls it through the core each step
    steps = 0
    while len(core.scheduler.running) < BATCH or steps < warmup:  # prefills, then warm-up
        engine.step()
        steps += 1
    fills.clear()
    times = []
    for _ in range(timed_steps):
        times.append(timed(engine.step))
        running = len(core.scheduler.running)
        assert running == BATCH, f"{tag}: only {running} requests still running"
    core._grammar_bitmask = fill
    engine.abort_request([f"{tag}-{i}" for i in range(BATCH)])
    return times, fills


def apply_alone(llm: LLM, device: str) -> float:
    """Median time to apply a filled 64-row bitmask to [64, vocab] float32 logits."""
    engine = llm.llm_engine
    manager = engine._structured_outputs()
    spec_params = SamplingParams(structured_outputs=StructuredOutputsParams(json=SCHEMA))
    grammars = []
    for i in range(BATCH):
        engine.add_request(f"apply-{i}", {"prompt": "x"}, spec_params)
    core = engine.engine_core
    grammars = [core.scheduler.requests[r].structured_output for r in list(core.scheduler.requests)]
    while not all(g.is_ready() for g in grammars):
        time.sleep(0.01)
    mask = manager.fill_bitmask(grammars)
    engine.abort_request([f"apply-{i}" for i in range(BATCH)])
    logits = torch.randn(BATCH, manager.vocab_size, device=device)
    times = [timed(lambda: apply_grammar_bitmask(logits, mask)) for _ in range(50)]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--load-format", default="auto", help="dummy: random weights (GPU run)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--timed-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm = LLM(model=args.model, load_format=args.load_format, dtype=args.dtype,
              max_model_len=2048, max_num_seqs=BATCH, seed=0,
              kv_cache_memory_bytes="4G")  # fmt: skip
    plain = SamplingParams(temperature=0.8, seed=1, max_tokens=1500, ignore_eos=True)
    schema = SamplingParams(
        temperature=0.8,
        seed=1,
        max_tokens=1500,
        structured_outputs=StructuredOutputsParams(json=SCHEMA),
    )
    # Alternated and repeated: a phase that ran while the host was busy shows as a spread
    # between repeats (listed) instead of as a false overhead.
    plain_steps: list[float] = []
    schema_steps: list[float] = []
    fills: list[float] = []
    per_repeat = []
    for repeat in range(args.repeats):
        steps, _ = decode_steps(llm, plain, f"plain{repeat}", 8, args.timed_steps)
        constrained, filled = decode_steps(llm, schema, f"schema{repeat}", 8, args.timed_steps)
        plain_steps += steps
        schema_steps += constrained
        fills += filled
        per_repeat.append((statistics.median(steps), statistics.median(constrained)))
    apply = apply_alone(llm, device)
    rows = [
        f"| decode step, {BATCH} requests | unconstrained | JSON schema | overhead per step |"
        " bitmask fill (host) |",
        "|---|---|---|---|---|",
    ]
    for name, stat in (("median", statistics.median), ("mean", statistics.fmean), ("p90", p90)):
        base, cost = stat(plain_steps), stat(schema_steps)
        rows.append(
            f"| {name} | {base * 1e3:.2f} ms | {cost * 1e3:.2f} ms | "
            f"{(cost - base) * 1e3:.2f} ms ({(cost - base) / base:.1%}) | "
            f"{stat(fills) * 1e3:.2f} ms |"
        )
    rows += [
        "",
        f"Bitmask apply alone ([{BATCH}, vocab] float32 logits): {apply * 1e3:.3f} ms. "
        "Per-repeat medians (unconstrained / JSON schema): "
        + ", ".join(f"{p * 1e3:.2f} / {q * 1e3:.2f} ms" for p, q in per_repeat)
        + ".",
    ]
    print("\n".join(rows))
    if args.record:
        from record import append_record, device_name

        workload = (
            f"{args.model} ({args.load_format} weights, {llm.llm_engine.model_config.dtype}), "
            f"{BATCH} running "
            "requests, temperature 0.8; JSON schema: an object holding an array of >= 20 "
            "person objects (string maxLength, integer range, email pattern, enum, array of "
            f"strings); {args.timed_steps} timed steps after all {BATCH} are decoding, "
            f"phases alternated {args.repeats} times; statistics over all timed steps"
        )
        append_record("Structured outputs: bitmask cost per step", device_name(), workload, rows)


if __name__ == "__main__":
    main()
