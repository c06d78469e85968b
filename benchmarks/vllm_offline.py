"""vLLM's side of workloads 2 and 3 (benchmarks/gpu_workloads.py), one engine for both, in
the same call as pagedllm's: run it with vLLM's environment (``.vllm-anchor/README.md``).

    python benchmarks/vllm_offline.py --variant fp8 [--out DIR]
    python benchmarks/vllm_offline.py --workload 1 [--out DIR]

``--workload 1``: W1 instead (qwen3-0.6b, 256 requests with U[100, 1024] prompts and
max_tokens, temperature 0.6, ignore_eos; the requests of gpu_workloads.py's W1), output
tokens per second.

W3 (single stream, 128 prompt tokens, 256 out, greedy): inter-token latency as (time for
256 tokens - time for 1 token) / 255, median of three; W2 (1000 x 512 in / 256 out,
temperature 1, ignore_eos): output tokens per second. Variants as in gpu_workloads.py.
Prints one ``RESULT`` JSON line and writes it to ``DIR/vllm-<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

HERE = Path(__file__).parent
LLAMA8B = str(HERE / "model-configs" / "llama-3.1-8b-instruct")
QWEN3 = str(HERE / "model-configs" / "qwen3-0.6b")
VARIANTS = {
    "bf16": {},
    "fp8": {"quantization": "fp8"},
    "kvfp8": {"kv_cache_dtype": "fp8"},
    "fp8+kvfp8": {"quantization": "fp8", "kv_cache_dtype": "fp8"},
}


def timed(llm, prompts: list[list[int]], params) -> tuple[float, int]:
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        use_tqdm=False)  # fmt: skip
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="bf16")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--workload", choices=["1", "2,3"], default="2,3")
    args = parser.parse_args()
    if args.workload == "1":
        workload1(args.out)
        return
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=LLAMA8B, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=4096, gpu_memory_utilization=0.9, seed=0,
              **VARIANTS[args.variant])  # fmt: skip
    startup = time.perf_counter() - started
    stream = [[random.Random(1).randint(0, 10000) for _ in range(128)]]
    greedy = dict(temperature=0.0, ignore_eos=True, detokenize=False)
    timed(llm, stream, SamplingParams(max_tokens=16, **greedy))  # warm-up
    itls = []
    for _ in range(3):
        first, _ = timed(llm, stream, SamplingParams(max_tokens=1, **greedy))
        whole, _ = timed(llm, stream, SamplingParams(max_tokens=256, **greedy))
        itls.append((whole - first) / 255)
    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(512)] for _ in range(1000)]
    params = SamplingParams(temperature=1.0, max_tokens=256, ignore_eos=True, detokenize=False)
    timed(llm, prompts[:8], SamplingParams(max_tokens=8, ignore_eos=True, detokenize=False))
    seconds, tokens = timed(llm, prompts, params)
    result = {"engine": "vllm", "variant": args.variant, "startup_s": startup,
              "w3_itl_ms": statistics.median(itls) * 1e3, "w2_tok_s": tokens / seconds,
              "w2_seconds": seconds, "w2_output_tokens": tokens}  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)
    Path(args.out, f"vllm-{args.variant}.json").write_text(json.dumps(result))


def workload1(out: str) -> None:
    from gpu_workloads import workload1_requests
    from vllm import LLM, SamplingParams

    prompts, max_tokens = workload1_requests()
    llm = LLM(model=QWEN3, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=4096, gpu_memory_utilization=0.9, seed=0)  # fmt: skip
    timed(llm, prompts[:8], SamplingParams(max_tokens=8, ignore_eos=True, detokenize=False))
    params = [SamplingParams(temperature=0.6, max_tokens=m, ignore_eos=True, detokenize=False)
              for m in max_tokens]  # fmt: skip
    seconds, tokens = timed(llm, prompts, params)
    result = {"engine": "vllm", "workload": 1, "seconds": seconds, "output_tokens": tokens,
              "tok_s": tokens / seconds}  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)
    Path(out, "vllm-w1.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
