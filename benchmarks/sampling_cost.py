"""What sampling costs next to a decode step: a 256-request batch with penalties, top-k,
top-p and logprobs all on, against a plain decode step of the same engine (qwen3-0.6b dummy
weights on a GPU): the steps' wall time back to back, the sampler's time on the device
stream inside them, and the sampler called alone, synchronised.

    python benchmarks/sampling_cost.py [--record]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from pagedllm import LLM, SamplingParams  # noqa: E402

# This benchmark reads the engine core's internals: the core runs in this process.
os.environ.setdefault("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")

STEPS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(HERE / "model-configs" / "qwen3-0.6b"))
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print a torch profiler table")
    args = parser.parse_args()
    llm = LLM(model=args.model, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=4096, kv_cache_memory_bytes="40G")  # fmt: skip
    engine = llm.llm_engine
    rng = random.Random(0)
    heavy = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, presence_penalty=0.5,
                           frequency_penalty=0.3, repetition_penalty=1.1, logprobs=5,
                           max_tokens=2000, ignore_eos=True, detokenize=False)  # fmt: skip
    plain = SamplingParams(temperature=0.8, max_tokens=2000, ignore_eos=True, detokenize=False)
    results = {}
    for name, params in (("plain", plain), ("all on", heavy)):
        for i in range(256):
            prompt = [rng.randrange(100, 30000) for _ in range(rng.randint(100, 1024))]
            engine.add_request(f"{name}-{i}", {"prompt_token_ids": prompt}, params)
        for _ in range(60):
            engine.step()
        runner = engine.engine_core.runner
        # Steps back to back, as the engine runs them (with async scheduling the host
        # prepares step N+1 while N runs, so one step's wall time is the interval).
        timed = _StreamTimed(runner.sampler)
        runner.sampler = timed
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(STEPS):
            engine.step()
        torch.cuda.synchronize()
        step = (time.perf_counter() - start) / STEPS
        runner.sampler = timed.inner
        in_step = statistics.median(timed.times())
        states = list(runner.requests.values())[:256]
        vocab = engine.model_config.vocab_size
        # In the model's dtype, as the LM head hands them to the sampler.
        dtype = next(runner.model.parameters()).dtype
        logits = torch.randn(256, vocab, device="cuda", dtype=dtype)
        samples = []
        for _ in range(30):
            torch.cuda.synchronize()
            start = time.perf_counter()
            # The engine's path: penalty statistics from the runner's device tables, the
            # metadata of a steady batch carried over from the step before.
            metadata = runner._sampling_metadata(states)
            out = runner.sampler(logits, metadata)
            out.token_ids.tolist()
            if out.logprobs is not None:
                out.logprobs.to_lists(out.token_ids.tolist(), [5] * 256)
            torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
        results[name] = (step, in_step, statistics.median(samples))
        if args.profile:
            profile_sampling(runner, states, logits, vocab)
        engine.abort_request([f"{name}-{i}" for i in range(256)])
    rows = ["| sampling | decode step (256 requests) | sampler in the step (device stream) "
            "| share of the step | sampler called alone (host + device) | share |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for name, (step, in_step, alone) in results.items():
        cells = [name, f"{step * 1e3:.2f} ms", f"{in_step * 1e3:.2f} ms", f"{in_step / step:.1%}",
                 f"{alone * 1e3:.2f} ms", f"{alone / step:.1%}"]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    print("\n".join(rows))
    if args.record:
        from record import append_record, device_name

        workload = ("qwen3-0.6b dummy bf16, 256 running requests (prompts 100-1024 tokens); "
                    "'all on' = presence/frequency/repetition penalties, top_k=50, top_p=0.9, "
                    "temperature 0.8, logprobs=5; decode step = wall time of 50 consecutive "
                    "engine steps / 50; sampler in the step = median CUDA-event time of the "
                    "sampler call inside those steps; sampler called alone = metadata "
                    "(carried over from the step before) + sampler + logprobs lists on "
                    "random [256, vocab] logits in the model's dtype, synchronised, as "
                    "recorded before")  # fmt: skip
        append_record("Sampling cost", device_name(), workload, rows)


class _StreamTimed:
    """The engine's sampler, with CUDA events around each call: the time the sampler's
    kernels occupy the device stream inside real steps (gaps while the host launches
    them included)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def __call__(self, logits: torch.Tensor, metadata):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.inner(logits, metadata)
        end.record()
        self.events.append((start, end))
        return out

    def times(self) -> list[float]:
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in self.events]


def profile_sampling(runner, states, logits: torch.Tensor, vocab: int) -> None:
    """Where one sampling call's time goes: CUDA kernels and host work."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            metadata = runner._sampling_metadata(states)
            out = runner.sampler(logits, metadata)
            if out.logprobs is not None:
                out.logprobs.to_lists(out.token_ids.tolist(), [5] * len(states))
            out.token_ids.tolist()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
