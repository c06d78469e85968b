"""The GPU workloads of issue 4, each in a fresh process, with transformers' continuous
batching (``generate_batch``) and the device's measured ceilings as comparisons.

    python benchmarks/gpu_workloads.py --workloads 1,2,3,4 --hf [--record]

1. small model, many requests: qwen3-0.6b dummy bf16, 256 requests, prompt and output
   lengths uniform in [100, 1024] (random.seed(0)), temperature 0.6, ignore_eos.
2. 8B, many requests: llama-3.1-8b dummy bf16, 1000 x (512 in, 256 out), ignore_eos.
3. single stream: llama-3.1-8b, 128 prompt tokens, 256 output: median inter-token latency.
4. start-up: seconds from process start to the first generated token (workload 3's model).
A ``profile`` job prints where one decode step of workload 2 spends its time; ``mixed`` times
steps that carry prefill beside decodes (a saturated server's steps) and profiles one;
``w1steps`` times W1 step by step (the host's part and the device wait, by batch);
``w1busy`` runs all of W1 under the profiler: device time by kind of kernel, against wall;
``w3prof`` lists the kernels of one single-stream decode step (``w3prof:fp8`` too);
``launch`` shows where the host waits while launching a saturated server's eager steps
(and whether the allocator went to the device meanwhile); ``queue`` whether big GEMMs let
the host run ahead at all, and the launch queue's depth;
``padding`` (``padding:eager``) times steps of one new prompt beside 24 decodes by the mixed
CUDA graph they run in (or eagerly).

Workloads 2 and 3 take a variant after a colon (``2:fp8``, ``3:fp8+kvfp8``): ``fp8``
(``quantization="fp8"``), ``kvfp8`` (``kv_cache_dtype="fp8"``), both, ``bf16`` (none).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout, installed or not
sys.path.insert(0, str(HERE))
from itl_gaps import mixed_graph  # noqa: E402

CONFIGS = HERE / "model-configs"
QWEN3 = str(CONFIGS / "qwen3-0.6b")
LLAMA8B = str(CONFIGS / "llama-3.1-8b-instruct")
VARIANTS = {
    "bf16": {},
    "fp8": {"quantization": "fp8"},
    "kvfp8": {"kv_cache_dtype": "fp8"},
    "fp8+kvfp8": {"quantization": "fp8", "kv_cache_dtype": "fp8"},
}


def workload1_requests() -> tuple[list[list[int]], list[int]]:
    random.seed(0)
    prompts = [
        [random.randint(0, 10000) for _ in range(random.randint(100, 1024))] for _ in range(256)
    ]
    max_tokens = [random.randint(100, 1024) for _ in range(256)]
    return prompts, max_tokens


def engine(model: str, max_model_len: int, **kw):
    from pagedllm import LLM

    return LLM(model=model, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
               max_model_len=max_model_len, gpu_memory_utilization=0.9, seed=0, **kw)  # fmt: skip


def w1_params(max_tokens: list[int]) -> list:
    """W1's sampling: temperature 0.6, each request's drawn length, token ids out."""
    from pagedllm import SamplingParams

    return [SamplingParams(temperature=0.6, max_tokens=m, ignore_eos=True, detokenize=False)
            for m in max_tokens]  # fmt: skip


def warm_up(llm, prompts) -> None:
    """Eight short requests before the timed run (kernels compiled, graphs captured)."""
    from pagedllm import SamplingParams

    warm = SamplingParams(max_tokens=8, detokenize=False, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:8]], warm, use_tqdm=False)


def timed_generate(llm, prompts, params) -> tuple[float, int]:
    warm_up(llm, prompts)
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.outputs[0].token_ids) for o in outs)


# -- jobs, one per process ------------------------------------------------------------------


def job_w1() -> dict:
    prompts, max_tokens = workload1_requests()
    llm = engine(QWEN3, 4096)
    elapsed, tokens = timed_generate(llm, prompts, w1_params(max_tokens))
    return {"workload": 1, "seconds": elapsed, "output_tokens": tokens, "tok_s": tokens / elapsed}


def job_w2(variant: str = "bf16") -> dict:
    from pagedllm import SamplingParams

    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(512)] for _ in range(1000)]
    llm = engine(LLAMA8B, 4096, **VARIANTS[variant])
    params = SamplingParams(temperature=1.0, max_tokens=256, ignore_eos=True, detokenize=False)
    elapsed, tokens = timed_generate(llm, prompts, params)
    state = llm.llm_engine.call_core("kv_cache_state")
    return {"workload": 2, "variant": variant, "seconds": elapsed, "output_tokens": tokens,
            "tok_s": tokens / elapsed, "kv_blocks": state["num_blocks"],
            "preemptions": state["num_preemptions"]}  # fmt: skip


def job_w3(variant: str = "bf16") -> dict:
    import torch

    from pagedllm import RequestOutputKind, SamplingParams

    llm = engine(LLAMA8B, 4096, **VARIANTS[variant])
    prompt = {"prompt_token_ids": [random.Random(1).randint(0, 10000) for _ in range(128)]}
    params = SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True, detokenize=False,
                            output_kind=RequestOutputKind.DELTA)  # fmt: skip
    llm.generate(prompt, SamplingParams(max_tokens=16, detokenize=False), use_tqdm=False)
    engine_ = llm.llm_engine
    stamps = []
    for run in range(2):
        engine_.add_request(f"w3-{run}", prompt, params)
        stamps = []
        while engine_.has_unfinished_requests():
            if engine_.step():
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    itl = statistics.median(gaps)
    end_to_end = []  # vllm_offline.py's measure, for a like-for-like ratio
    greedy = dict(temperature=0.0, ignore_eos=True, detokenize=False)
    for _ in range(3):
        first = time.perf_counter()
        llm.generate(prompt, SamplingParams(max_tokens=1, **greedy), use_tqdm=False)
        whole = time.perf_counter()
        llm.generate(prompt, SamplingParams(max_tokens=256, **greedy), use_tqdm=False)
        end_to_end.append(((time.perf_counter() - whole) - (whole - first)) / 255)
    weight_bytes = engine_.call_core("weight_bytes")
    read = engine_.call_core("decode_read_bytes")  # the embedding table is not read whole
    bandwidth = copy_bandwidth(torch)
    return {"workload": 3, "variant": variant, "median_itl_ms": itl * 1e3,
            "end_to_end_itl_ms": statistics.median(end_to_end) * 1e3,
            "weight_gb": weight_bytes / 1e9, "read_gb": read / 1e9,
            "implied_tb_s": read / itl / 1e12, "copy_tb_s": bandwidth / 1e12,
            "fraction": read / itl / bandwidth}  # fmt: skip


def job_w4() -> dict:
    """From process start (imports included) to the first generated token."""
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--job", "first_token"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    for line in proc.stdout:  # type: ignore[union-attr]
        elapsed = time.perf_counter() - start
        print(f"[{elapsed:6.2f} s] {line}", end="", flush=True)  # where the start-up goes
        if "FIRST-TOKEN" in line:
            first = elapsed
    proc.wait()
    return {"workload": 4, "startup_s": first}


def job_first_token() -> dict:
    from pagedllm import SamplingParams

    llm = engine(LLAMA8B, 4096)
    params = SamplingParams(max_tokens=1, detokenize=False)
    llm.generate({"prompt_token_ids": [5] * 128}, params, use_tqdm=False)
    print("FIRST-TOKEN", flush=True)
    return {}


def mean_step_ms(torch, eng, warm: int, timed: int) -> float:
    """``warm`` engine steps, then the mean wall time of the next ``timed`` (ms)."""
    for _ in range(warm):
        eng.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(timed):
        eng.step()
    return (time.perf_counter() - start) / timed * 1e3


def _profile_in_process() -> None:
    """Profilers look at this process: the engine core must run in it."""
    os.environ["PAGEDLLM_ENABLE_MULTIPROCESSING"] = "0"


def job_profile() -> dict:
    """One decode step of workload 2's shape (256 running requests, 512-token prompts), eager
    so the profiler sees each kernel."""
    _profile_in_process()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pagedllm import SamplingParams

    llm = engine(LLAMA8B, 4096, enforce_eager=True)
    eng = llm.llm_engine
    rng = random.Random(0)
    params = SamplingParams(temperature=1.0, max_tokens=200, ignore_eos=True, detokenize=False)
    for i in range(256):
        eng.add_request(
            str(i), {"prompt_token_ids": [rng.randint(0, 10000) for _ in range(512)]}, params
        )
    step_ms = mean_step_ms(torch, eng, 30, 5)  # through the prefills into steady decoding
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            eng.step()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    return {"job": "profile", "eager_step_ms": step_ms, "table": table}


def serve_budget_engine(**kw: Any) -> Any:
    """llama-3.1-8b's engine (``LLMEngine``) at serve's budget: 8,192 tokens, 1,024 sequences."""
    return engine(LLAMA8B, 4096, max_num_batched_tokens=8192, max_num_seqs=1024, **kw).llm_engine


def saturated_engine(**kw: Any) -> tuple[Any, Callable[[int], None]]:
    """``serve_budget_engine`` with 256 requests of 512-token prompts steadily decoding, and
    ``add(n)``, which queues n more such prompts."""
    from pagedllm import SamplingParams

    eng = serve_budget_engine(**kw)
    rng = random.Random(0)
    params = SamplingParams(temperature=1.0, max_tokens=4000, ignore_eos=True, detokenize=False)
    counter = itertools.count()

    def add(n: int) -> None:
        for _ in range(n):
            prompt = [rng.randint(0, 10000) for _ in range(512)]
            eng.add_request(str(next(counter)), {"prompt_token_ids": prompt}, params)

    add(256)
    for _ in range(40):  # through the prefills into steady decoding
        eng.step()
    return eng, add


def job_mixed(variant: str = "") -> dict:
    """Steps that carry prefill beside decodes, as a saturated server runs them (serve's
    8,192-token budget, 256 requests decoding, 512-token prompts): the step time for 0, 2,048,
    4,096 and 8,192 new prefill tokens and the FLOP rate it implies; ``mixed:prof`` profiles
    the 8,192-token step, eager; ``mixed:fp8`` (``mixed:fp8+prof``) does either with FP8
    weights (``quantization="fp8"``). Steps are synchronous here (no async scheduling) so
    each is timed alone."""
    _profile_in_process()
    import torch

    parts = set(variant.split("+")) - {""}
    if not parts <= {"prof", "fp8"}:
        raise ValueError(f"mixed takes 'prof', 'fp8' or 'fp8+prof', got {variant!r}")
    eager = "prof" in parts
    quant = {"quantization": "fp8"} if "fp8" in parts else {}
    eng, add = saturated_engine(async_scheduling=False, enforce_eager=eager, **quant)
    if eager:
        from torch.profiler import ProfilerActivity, profile

        add(16)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            eng.step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=22)
        return {"job": f"mixed:{variant}", "table": table}
    config = json.loads(Path(LLAMA8B, "config.json").read_text())
    flop_per_token = 2 * engine_params(config)
    rows = []
    for prefill in (0, 2048, 4096, 8192, 0):
        times = []
        for _ in range(3):
            add(prefill // 512)
            torch.cuda.synchronize()
            start = time.perf_counter()
            eng.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1e3
        tokens = prefill + eng.engine_core.scheduler.stats().num_running
        rows.append({"prefill": prefill, "step_ms": round(ms, 2),
                     "tflop_s": round(tokens * flop_per_token / ms / 1e9, 1)})  # fmt: skip
    return {"job": f"mixed:{variant}" if variant else "mixed", "steps": rows}


def job_padding(variant: str = "") -> dict:
    """Steps that carry one new prompt beside 24 decodes, as a server at 16 req/s runs them:
    the step time by token count, replayed in the smallest mixed CUDA graph that holds it
    (``padding``) or eager (``padding:eager``), so the cost of a graph's padding is read
    against the launches it saves. Synchronous steps, each timed alone; the new prompt asks
    for one token, so the decode batch stays at 24."""
    _profile_in_process()
    import torch

    from pagedllm import SamplingParams

    if variant not in ("", "eager"):
        raise ValueError(f"padding takes no variant or 'eager', got {variant!r}")
    eager = variant == "eager"
    eng = serve_budget_engine(async_scheduling=False, enforce_eager=eager)
    rng = random.Random(0)
    counter = itertools.count()

    def add(length: int, max_tokens: int) -> None:
        prompt = [rng.randint(0, 10000) for _ in range(length)]
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        eng.add_request(str(next(counter)), {"prompt_token_ids": prompt}, params)

    for _ in range(24):
        add(512, 4000)
    for _ in range(8):
        eng.step()
    rows = []
    for length in (0, 256, 384, 488, 512, 600, 744, 1000, 1100, 1256, 1500, 2000):
        times = []
        for _ in range(4):
            if length:
                add(length, 1)
            torch.cuda.synchronize()
            start = time.perf_counter()
            eng.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        tokens = length + 24
        graph = "eager" if eager else mixed_graph(tokens)
        rows.append({"tokens": tokens, "graph": graph,
                     "step_ms": round(statistics.median(times[1:]) * 1e3, 2)})  # fmt: skip
    return {"job": f"padding{':eager' if eager else ''}", "steps": rows}


def job_launch() -> dict:
    """Where the host waits while it launches eager prefill steps (serve's 8,192-token budget,
    256 requests decoding, 16 new 512-token prompts before each step, async scheduling as
    served): each step's wall time, the CUDA runtime calls by host time, and every operation
    that synchronizes with the device (``torch.cuda.set_sync_debug_mode``) with its stack."""
    _profile_in_process()
    import traceback
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile

    eng, add = saturated_engine()
    for _ in range(4):  # the eager path's first runs (Triton variants) outside the timing
        add(16)
        eng.step()
    syncs: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        where = "".join(traceback.format_stack(limit=9)[:-2])
        syncs[where] = syncs.get(where, 0) + 1

    warnings.showwarning = record
    warnings.simplefilter("always")
    walls = []
    before = torch.cuda.memory_stats()
    torch.cuda.set_sync_debug_mode("warn")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(8):
            add(16)
            start = time.perf_counter()
            eng.step()
            walls.append(round((time.perf_counter() - start) * 1e3, 1))
    torch.cuda.set_sync_debug_mode(0)
    after = torch.cuda.memory_stats()
    # An allocator that must return cached memory to the device (cudaFree) synchronizes it:
    # these counters say whether the eager steps' allocations went to the device at all.
    keys = ("num_alloc_retries", "num_sync_all_streams", "num_device_alloc", "num_device_free")
    allocator = {key: after.get(key, 0) - before.get(key, 0) for key in keys}
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    shown = sorted(syncs.items(), key=lambda kv: -kv[1])[:8]
    return {"job": "launch", "step_wall_ms": walls, "allocator": allocator, "table": table,
            "log": "\n".join(f"{n} x\n{where}" for where, n in shown)}  # fmt: skip


def job_queue() -> dict:
    """Whether the host can run ahead of the device on big GEMMs, without the engine: the
    host time to enqueue n bfloat16 GEMMs of a prefill step's gate_up shape (8,192 x 4,096 x
    28,672) against their device time, and how many tiny kernels queue behind one long GEMM
    before an enqueue waits (the launch queue's depth). If the GEMMs' enqueue alone takes
    their device time, eager prefill steps hold the host in cuBLAS whatever the engine does."""
    import torch

    a = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(28672, 4096, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(8192, 28672, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b.t(), out=out)
    torch.cuda.synchronize()
    gemms = []
    for n in (4, 16, 64):
        for fresh in (False, True):  # into one buffer, or a new output each (as eager runs)
            start = time.perf_counter()
            for _ in range(n):
                if fresh:
                    torch.mm(a, b.t())
                else:
                    torch.mm(a, b.t(), out=out)
            host = time.perf_counter() - start
            torch.cuda.synchronize()
            device = time.perf_counter() - start
            gemms.append({"gemms": n, "fresh_output": fresh, "enqueue_ms": round(host * 1e3, 2),
                          "done_ms": round(device * 1e3, 2)})  # fmt: skip
    tiny = torch.zeros(256, device="cuda")
    tiny.add_(1.0)  # its first launch loads the kernel's module (25 ms): not a queue wait
    torch.cuda.synchronize()
    torch.mm(a, b.t(), out=out)
    stamps = []
    start = time.perf_counter()
    for _ in range(8192):
        tiny.add_(1.0)
        stamps.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    steps = [later - earlier for earlier, later in zip([0.0, *stamps], stamps)]
    first_wait = next((i for i, t in enumerate(steps) if t > 200e-6), None)
    return {"job": "queue", "gemms": gemms, "tiny_kernels_before_a_wait": first_wait,
            "longest_enqueue_us": round(max(steps) * 1e6, 1)}  # fmt: skip


def engine_params(config: dict) -> int:
    """Parameters a token multiplies through (attention and MLP projections, LM head)."""
    h, inter, layers = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
    )
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads")
    head_dim = config.get("head_dim") or h // heads
    qkv = h * head_dim * (heads + 2 * (kv or heads))
    per_layer = qkv + heads * head_dim * h + 3 * h * inter
    return layers * per_layer + h * config["vocab_size"]


def job_w1prof() -> dict:
    """Workload 1 at steady state: Python hot spots (cProfile) and GPU kernel time."""
    _profile_in_process()
    import cProfile
    import io
    import pstats

    import torch
    from torch.profiler import ProfilerActivity, profile

    from pagedllm import SamplingParams

    prompts, max_tokens = workload1_requests()
    llm = engine(QWEN3, 4096)
    eng = llm.llm_engine
    for i, (p, m) in enumerate(zip(prompts, max_tokens)):
        sp = SamplingParams(temperature=0.6, max_tokens=m + 400, ignore_eos=True, detokenize=False)
        eng.add_request(str(i), {"prompt_token_ids": p}, sp)
    step_ms = mean_step_ms(torch, eng, 120, 50)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(50):
        eng.step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            eng.step()
    kernels = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    running = eng.engine_core.scheduler.stats().num_running
    return {"job": "w1prof", "step_ms": step_ms, "running": running,
            "table": text.getvalue()[-6000:] + "\n" + kernels}  # fmt: skip


def job_w1steps() -> dict:
    """Workload 1 step by step, its core stepped on this thread: each step's wall time,
    the part of it spent waiting for the device (the sampled ids' copy), and the running
    batch. A step that never waits had the device idle for part of it: the host paced it.
    The front end's output processing runs on this thread too, so host times here are an
    upper bound on the engine process's."""
    _profile_in_process()
    from pagedllm.worker import step_output

    waited = [0.0]
    read = step_output.SampledOnDevice.read

    def timed_read(self):
        start = time.perf_counter()
        if self.copied is not None:
            self.copied.synchronize()
        waited[0] += time.perf_counter() - start
        return read(self)

    step_output.SampledOnDevice.read = timed_read
    prompts, max_tokens = workload1_requests()
    llm = engine(QWEN3, 4096)
    eng = llm.llm_engine
    warm_up(llm, prompts)
    for i, (p, sp) in enumerate(zip(prompts, w1_params(max_tokens))):
        eng.add_request(str(i), {"prompt_token_ids": p}, sp)
    steps = []  # (running before the step, wall s, waited s)
    start = time.perf_counter()
    while eng.has_unfinished_requests():
        running = eng.engine_core.scheduler.stats().num_running
        waited[0] = 0.0
        began = time.perf_counter()
        eng.step()
        steps.append((running, time.perf_counter() - began, waited[0]))
    elapsed = time.perf_counter() - start
    return {"job": "w1steps", "seconds": elapsed, "output_tokens": sum(max_tokens),
            "tok_s": sum(max_tokens) / elapsed, "table": step_table(steps)}  # fmt: skip


# Kernel-name parts -> the category a W1 kernel's device time is counted in (first match).
KERNEL_KINDS = (
    ("attention", ("paged_attention", "merge_segments")),
    ("GEMM", ("nvjet", "gemm", "sm90_", "cutlass", "xmma", "cublas")),
    ("sampling", ("gumbel", "sampl", "argmax", "penalt", "logprob")),
    ("norm, rotary, activation", ("rms_norm", "rope", "silu", "write_kv")),
    ("copies", ("memcpy", "memset", "copy")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, parts in KERNEL_KINDS:
        if any(part in lowered for part in parts):
            return kind
    return "other"


def busy_seconds(spans: list[tuple[int, int]]) -> float:
    """The union of [start, end) spans (ns) in seconds: the time the device ran anything."""
    busy, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            busy += end - start
            reach = end
        elif end > reach:
            busy += end - reach
            reach = end
    return busy / 1e9


def w1_kv_bytes(config: dict) -> float:
    """K and V bytes W1's attention reads: output token j of a request of p prompt tokens
    reads p + j tokens' K and V (its whole context), at the model's 16-bit cache."""
    prompts, max_tokens = workload1_requests()
    per_token = (config["num_hidden_layers"] * config["num_key_value_heads"]
                 * config["head_dim"] * 2 * 2)  # fmt: skip
    reads = sum(len(p) * m + m * (m - 1) // 2 for p, m in zip(prompts, max_tokens))
    return float(reads * per_token)


def job_w1busy() -> dict:
    """All of workload 1 under the profiler (device kernels only, the core in this
    process): each kind of kernel's device time over the whole run, the time the device ran
    anything against the run's wall time, and attention's achieved read rate of the run's K
    and V bytes. The profiler's own cost shows as the wall time against job ``1``'s."""
    _profile_in_process()
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    prompts, max_tokens = workload1_requests()
    llm = engine(QWEN3, 4096)
    params = w1_params(max_tokens)
    warm_up(llm, prompts)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    kinds: dict[str, float] = {}
    spans = []
    for event in prof.profiler.kineto_results.events():
        if event.device_type() != DeviceType.CUDA:
            continue
        begin, ns = event.start_ns(), event.duration_ns()
        spans.append((begin, begin + ns))
        kind = kernel_kind(event.name())
        kinds[kind] = kinds.get(kind, 0.0) + ns / 1e9
    config = json.loads((Path(QWEN3) / "config.json").read_text())
    kv_bytes = w1_kv_bytes(config)
    attention = kinds.get("attention", 0.0)
    return {"job": "w1busy", "seconds": elapsed, "device_busy_s": busy_seconds(spans),
            "kernels": len(spans), "by_kind_s": kinds, "kv_tb": kv_bytes / 1e12,
            "attention_tb_s": kv_bytes / attention / 1e12 if attention else None}  # fmt: skip


def step_table(steps: list[tuple[int, float, float]]) -> str:
    """Steps by running batch: their count, wall time (sum and mean), the mean wait for the
    device, the mean rest (the host's work), and how many waited under 50 us."""
    buckets = [(0, 32), (32, 64), (64, 128), (128, 192), (192, 257)]
    lines = ["running   steps  wall_s  mean_ms  wait_ms  host_ms  no_wait"]
    for lo, hi in buckets:
        sel = [s for s in steps if lo <= s[0] < hi]
        if not sel:
            continue
        wall = sum(s[1] for s in sel)
        wait = sum(s[2] for s in sel)
        idle = sum(1 for s in sel if s[2] < 50e-6)
        n = len(sel)
        lines.append(f"{lo:>3}-{hi - 1:<4} {n:>7} {wall:>7.3f} {1e3 * wall / n:>8.3f} "
                     f"{1e3 * wait / n:>8.3f} {1e3 * (wall - wait) / n:>8.3f} "
                     f"{idle:>8}")  # fmt: skip
    return "\n".join(lines)


def job_w3prof(variant: str = "bf16") -> dict:
    """Workload 3's decode steps as they run (CUDA graphs): the kernels of one step, their
    summed time against the step's wall time (the rest is gaps between kernels and the
    host), so the single stream's cost beyond reading the weights has names."""
    _profile_in_process()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pagedllm import SamplingParams

    llm = engine(LLAMA8B, 4096, **VARIANTS[variant])
    eng = llm.llm_engine
    prompt = {"prompt_token_ids": [random.Random(1).randint(0, 10000) for _ in range(128)]}
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True, detokenize=False)
    eng.add_request("w3", prompt, params)
    step_ms = mean_step_ms(torch, eng, 40, 50)
    steps = 20
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            eng.step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.device_time_total for e in events if e.device_time_total) / steps
    table = events.table(sort_by="cuda_time_total", row_limit=30)
    return {"job": "w3prof", "variant": variant, "step_ms": step_ms,
            "kernel_ms_per_step": kernel_us / 1e3, "table": table}  # fmt: skip


def job_ceilings() -> dict:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    tflops = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    return {"job": "ceilings", "copy_tb_s": copy_bandwidth(torch) / 1e12, "bf16_tflops": tflops,
            "fp8_tflops": fp8_tflops(torch)}  # fmt: skip


def fp8_tflops(torch) -> float:
    """Row-wise scaled e4m3 GEMM (what --quantization fp8 runs) at 8192^3."""
    a = torch.randn(8192, 8192, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(8192, 8192, device="cuda").to(torch.float8_e4m3fn)
    sa = torch.ones(8192, 1, device="cuda")
    sb = torch.ones(1, 8192, device="cuda")

    def gemm():
        return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    for _ in range(3):
        gemm()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        gemm()
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def copy_bandwidth(torch) -> float:
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 10 * 2 * x.numel() / (time.perf_counter() - start)


# -- transformers' continuous batching --------------------------------------------------------


def _hf_model(config_dir: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def _hf_generate(model, prompts, max_new_tokens: int, temperature: float) -> tuple[float, int]:
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=1.0,
        top_k=0, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    # no_grad, not inference_mode: generate_batch runs its loop on another thread, which
    # must be allowed to update the tensors made here.
    with torch.no_grad():
        model.generate_batch(inputs=prompts[:4], generation_config=config, progress_bar=False)
        start = time.perf_counter()
        results = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
        elapsed = time.perf_counter() - start
    tokens = sum(len(r.generated_tokens) for r in results.values())
    return elapsed, tokens


def job_hf1() -> dict:
    prompts, max_tokens = workload1_requests()
    subset = 64  # the full workload does not finish in minutes (see the table)
    new = round(sum(max_tokens[:subset]) / subset)
    elapsed, tokens = _hf_generate(_hf_model(QWEN3), prompts[:subset], new, 0.6)
    return {"job": "hf1", "requests": subset, "max_new_tokens": new, "seconds": elapsed,
            "output_tokens": tokens, "tok_s": tokens / elapsed}  # fmt: skip


def job_hf2() -> dict:
    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(512)] for _ in range(200)]
    elapsed, tokens = _hf_generate(_hf_model(LLAMA8B), prompts, 256, 1.0)
    return {"job": "hf2", "requests": 200, "seconds": elapsed, "output_tokens": tokens,
            "tok_s": tokens / elapsed}  # fmt: skip


JOBS = {"1": job_w1, "2": job_w2, "3": job_w3, "4": job_w4, "profile": job_profile,
        "ceilings": job_ceilings, "hf1": job_hf1, "hf2": job_hf2,
        "first_token": job_first_token, "w1prof": job_w1prof, "mixed": job_mixed,
        "w3prof": job_w3prof, "w1steps": job_w1steps, "launch": job_launch,
        "padding": job_padding, "queue": job_queue, "w1busy": job_w1busy}  # fmt: skip


def run_job(name: str, out_dir: Path, timeout: float) -> dict:
    log = out_dir / f"job-{name}.log"
    cmd = [sys.executable, __file__, "--job", name]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        with log.open("w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env)
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            return {"job": name, "error": f"exit {done.returncode}", "log": log.read_text()[-3000:]}
        return json.loads(lines[-1][len("RESULT ") :])
    except subprocess.TimeoutExpired:
        return {"job": name, "error": f"timed out after {timeout:.0f} s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default="ceilings,1,2,3,4")
    parser.add_argument("--hf", action="store_true", help="also run transformers' generate_batch")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.job:
        name, _, variant = args.job.partition(":")
        result = JOBS[name](variant) if variant else JOBS[name]()
        print("RESULT " + json.dumps(result), flush=True)
        return
    names = args.workloads.split(",") + (["hf1", "hf2"] if args.hf else [])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        started = time.perf_counter()
        result = run_job(name, out_dir, args.timeout)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        results.append(result)
        shown = {k: v for k, v in result.items() if k not in ("table", "log")}
        print(json.dumps(shown), flush=True)
        if "table" in result:
            print(result["table"], flush=True)
        if "log" in result:
            print(result["log"], flush=True)
    (out_dir / "gpu_workloads.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
