"""What carrying each step to the ranks costs: start-up time and decode-step time of a tiny
random model (the model's own work is negligible, so a step is mostly the executor's
messages and the ranks' collectives) on one rank, two ``mp`` worker processes, and two Ray
actors on a local Ray instance.

    python benchmarks/executor_step_cost.py [--steps 200] [--repeats 3]

Ray must be installed (``pip install 'pagedllm[ray]'``) for the ray rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pagedllm import LLM, SamplingParams
from pagedllm.inputs import TokensPrompt
from tests.conftest import engine_in_process, save_tiny_model

SETUPS = {"one": ("one rank", 1, "mp"), "mp": ("tp=2 mp", 2, "mp"), "ray": ("tp=2 ray", 2, "ray")}


def measure(model: Path, tp: int, backend: str, steps: int, repeats: int) -> tuple[float, float]:
    """Start-up seconds, and the median over ``repeats`` of ms per decode step."""
    start = time.perf_counter()
    with engine_in_process():
        llm = LLM(
            str(model), tensor_parallel_size=tp, distributed_executor_backend=backend,
            kv_cache_memory_bytes="8M", max_model_len=steps + 16, skip_tokenizer_init=True,
            disable_log_stats=True,
        )  # fmt: skip
    startup = time.perf_counter() - start
    params = SamplingParams(max_tokens=steps, temperature=0, detokenize=False, ignore_eos=True)
    prompt = TokensPrompt(prompt_token_ids=[5, 6, 7, 8])
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            llm.generate([prompt], params, use_tqdm=False)
            times.append((time.perf_counter() - start) / steps * 1e3)
    finally:
        llm.llm_engine.shutdown()
        llm.llm_engine.core.engine_core.shutdown()
    return startup, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--setups", default="one,mp,ray", help="of: one, mp, ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model("qwen2", Path(tmp) / "qwen2")
        import ray

        ray.init(num_cpus=2, include_dashboard=False)
        print("| setup | start-up s | ms / decode step |\n|---|---|---|")
        for name, tp, backend in (SETUPS[key] for key in args.setups.split(",")):
            startup, step_ms = measure(model, tp, backend, args.steps, args.repeats)
            print(f"| {name} | {startup:.1f} | {step_ms:.2f} |", flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
