"""Serving at saturation and at a steady rate: pagedllm serve and (if installed) vllm serve,
on the same machine, driven by the same client.

    python benchmarks/serving.py --engines pagedllm,vllm --rates inf,16 [--record] [--out DIR]

Workload (issue 13): llama-3.1-8b with dummy bf16 weights and a word-level tokenizer of
its vocabulary, 500 random prompts of 512 tokens, 256 output tokens each, ``--ignore-eos``,
``--max-model-len 1024``, every other flag default. Each timed run uses a fresh seed (its
prompts are new to the server's prefix cache); a short warm-up with another seed precedes
them. The client is ``vllm bench serve`` when vLLM is installed (``--client vllm``), else
``pagedllm bench serve``. pagedllm's median engine step over the rate-inf run is read from
its stats log line, to compare with the clients' median inter-token latency.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from itl_gaps import gap_shape, step_shape, steps_by_graph  # noqa: E402

LLAMA8B = HERE / "model-configs" / "llama-3.1-8b-instruct"


def dummy_model(config_dir: Path, out: Path) -> Path:
    """``out/config.json`` and ``out/tokenizer/``: a WordLevel tokenizer with one token
    ``t{i}`` per id of the vocabulary, so random token ids decode and re-encode exactly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    config = json.loads((config_dir / "config.json").read_text())
    vocab_size = int(config["vocab_size"])
    tokenizer_dir = out / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_dir / "config.json", out / "config.json")
    # No config.json beside the tokenizer: transformers would pick the model's own
    # tokenizer class from it and replace this word-level pipeline.
    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="t0", eos_token=f"t{eos}", pad_token=f"t{eos}",
        model_max_length=int(config.get("max_position_embeddings", 4096)),
    )  # fmt: skip
    fast.save_pretrained(tokenizer_dir)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(engine: str, model: Path, port: int, max_model_len: int) -> list[str]:
    """``engine`` is ``pagedllm`` or ``vllm``, optionally with extra flags after ``+`` signs
    (``pagedllm+--max-num-batched-tokens=4096``) to compare settings in one call."""
    name, *extra = engine.split("+")
    common = [str(model), "--tokenizer", str(model / "tokenizer"), "--load-format", "dummy",
              "--max-model-len", str(max_model_len), "--port", str(port),
              "--host", "127.0.0.1", *extra]  # fmt: skip
    if name == "vllm":
        return ["vllm", "serve", *common]
    return [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "serve", *common,
            "--dtype", "bfloat16", "--disable-uvicorn-access-log"]  # fmt: skip


PYTHONPATHS: dict[str, str] = {}  # "vllm" / "pagedllm" -> PYTHONPATH of its processes


def child_env(engine: str) -> dict[str, str]:
    """The environment of a server or client process: with --pythonpath-vllm or
    --pythonpath-pagedllm, that package's own PYTHONPATH (on the GPU machine vLLM's wheels
    and pagedllm's pin different versions of the same libraries)."""
    env = dict(os.environ)
    path = PYTHONPATHS.get(engine.split("+")[0])
    if path is not None:
        env["PYTHONPATH"] = path
    return env


def file_stem(engine: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", engine)


def start(
    engine: str, model: Path, port: int, log: Path, max_model_len: int, trace: bool = False
) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    env = child_env(engine)
    if trace and engine.startswith("pagedllm"):  # one "Step ended at" line per engine step
        env["PAGEDLLM_LOGGING_LEVEL"] = "DEBUG"
    process = subprocess.Popen(
        server_command(engine, model, port, max_model_len),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    import httpx

    while time.perf_counter() - started < 600:
        if process.poll() is not None:
            raise RuntimeError(f"{engine} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"{engine} did not start")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def bench(client: str, model: Path, port: int, rate: str, seed: int, prompts: int,
          lengths: tuple[int, int], out: Path, name: str) -> dict:  # fmt: skip
    tool = ["vllm", "bench", "serve"] if client == "vllm" else [
        sys.executable, "-m", "pagedllm.entrypoints.cli.main", "bench", "serve"]  # fmt: skip
    cmd = [*tool, "--backend", "openai", "--endpoint", "/v1/completions",
           "--base-url", f"http://127.0.0.1:{port}", "--model", str(model),
           "--tokenizer", str(model / "tokenizer"), "--dataset-name", "random",
           "--random-input-len", str(lengths[0]), "--random-output-len", str(lengths[1]),
           "--num-prompts", str(prompts), "--ignore-eos", "--request-rate", rate,
           "--seed", str(seed), "--save-result", "--result-dir", str(out),
           "--result-filename", f"{name}.json"]  # fmt: skip
    if client == "pagedllm":
        cmd.append("--disable-tqdm")
    else:  # per-request gaps in the JSON (pagedllm's client always writes them)
        cmd.append("--save-detailed")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=child_env(client))
    (out / f"{name}.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: the client failed:\n{done.stderr[-3000:]}")
    return json.loads((out / f"{name}.json").read_text())


def median_step_ms(log: Path, since: int) -> float | None:
    """pagedllm's median engine step while the run was at its fullest: the 'Median step'
    of the logged intervals (after byte ``since``) with at least 90% of the most running
    requests seen."""
    text = log.read_text()[since:]
    found = [
        (int(running), float(step))
        for running, step in re.findall(r"Running: (\d+) reqs.*Median step: ([\d.]+) ms", text)
    ]
    busiest = max((running for running, _ in found), default=0)
    values = [step for running, step in found if running and running >= 0.9 * busiest]
    return statistics.median(values) if values else None


def run_engine(engine: str, args: argparse.Namespace, model: Path, out: Path) -> list[dict]:
    port = free_port()
    log = out / f"{file_stem(engine)}-server.log"
    process, startup = start(engine, model, port, log, args.max_model_len, args.step_trace)
    lengths = (args.input_len, args.output_len)
    rows = []
    try:
        stem = file_stem(engine)
        bench(args.client, model, port, "inf", 999, 50, lengths, out, f"{stem}-warmup")
        rates = dict(spec.rpartition("=")[::2] for spec in args.rates_for).get(engine, args.rates)
        for i, rate in enumerate(rates.split(",")):
            mark, began = len(log.read_text()), time.time()
            result = bench(args.client, model, port, rate, args.seed + i, args.num_prompts,
                           lengths, out, f"{stem}-rate{rate}")  # fmt: skip
            step = median_step_ms(log, mark) if engine.startswith("pagedllm") else None
            trace, ended = log.read_text()[mark:], time.time()
            gaps = {**gap_shape(result.pop("itls", [])),
                    **step_shape(trace, began, ended),
                    "by_graph": steps_by_graph(trace, began, ended)}  # fmt: skip
            for key in ("ttfts", "generated_texts", "input_lens", "output_lens", "errors"):
                result.pop(key, None)  # per-request lists: kept in the client's JSON file
            print(f"{engine} rate {rate} gaps: {json.dumps(gaps)}", flush=True)
            rows.append({"engine": engine, "rate": rate, "startup_s": startup,
                         "step_ms": step, "gaps": gaps, **result})  # fmt: skip
    finally:
        stop(process)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| engine | rate | output tok/s | TTFT median / P99 ms | TPOT median ms "
        "| ITL median / P99 ms | E2E median ms | median step ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        step = f"{r['step_ms']:.2f}" if r.get("step_ms") else "-"
        lines.append(
            f"| {r['engine']} | {r['rate']} | {r['output_throughput']:,.0f} "
            f"| {r['median_ttft_ms']:,.1f} / {r['p99_ttft_ms']:,.1f} | {r['median_tpot_ms']:.2f} "
            f"| {r['median_itl_ms']:.2f} / {r['p99_itl_ms']:.1f} "
            f"| {r.get('median_e2el_ms', float('nan')):,.0f} | {step} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="pagedllm,vllm")
    parser.add_argument("--rates", default="inf,16")
    parser.add_argument(
        "--rates-for",
        action="append",
        default=[],
        metavar="ENGINE=RATES",
        help="other rates for one engine spec, e.g. 'vllm=inf'",
    )
    parser.add_argument("--num-prompts", type=int, default=500)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--model-config", default=str(LLAMA8B), help="a config.json's folder")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--client", choices=["vllm", "pagedllm"], default=None)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--step-trace", action="store_true",
                        help="pagedllm servers log each step, to match the gaps")  # fmt: skip
    parser.add_argument("--pythonpath-vllm", default=None,
                        help="PYTHONPATH of the vllm server and client processes")  # fmt: skip
    parser.add_argument("--pythonpath-pagedllm", default=None,
                        help="PYTHONPATH of the pagedllm server and client processes")  # fmt: skip
    args = parser.parse_args()
    for name in ("vllm", "pagedllm"):
        if getattr(args, f"pythonpath_{name}") is not None:
            PYTHONPATHS[name] = getattr(args, f"pythonpath_{name}")
    args.client = args.client or ("vllm" if shutil.which("vllm") else "pagedllm")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config_dir = Path(args.model_config)
    model = dummy_model(config_dir, Path("/tmp/serving") / config_dir.name)
    rows: list[dict] = []
    for engine in args.engines.split(","):
        rows += run_engine(engine, args, model, out)
        print("\n".join(table(rows)), flush=True)
    (out / "serving.json").write_text(json.dumps(rows, indent=1, default=str))
    if args.record:
        from record import append_record, device_name

        workload = (
            f"{config_dir.name} dummy bf16, {args.num_prompts} random prompts x "
            f"{args.input_len} tokens, {args.output_len} output tokens, --ignore-eos, "
            f"--max-model-len {args.max_model_len}, client `{args.client} bench serve`, seeds "
            f"{args.seed}+ (fresh prompts per run), 50-prompt warm-up"
        )
        append_record("Serving at saturation and at 16 req/s", device_name(), workload,
                      table(rows))  # fmt: skip


if __name__ == "__main__":
    main()
