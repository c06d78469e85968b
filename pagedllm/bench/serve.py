"""``pagedllm bench serve``: benchmark a running OpenAI-compatible server (``pagedllm serve``
or ``vllm serve``) with vLLM's ``vllm bench serve`` flags, summary and result JSON.

    pagedllm bench serve --base-url http://127.0.0.1:8000 --tokenizer MODEL_DIR \\
        --random-input-len 1024 --random-output-len 128 --num-prompts 1000 \\
        --request-rate 8 --max-concurrency 64 --save-result --plot

A run: one test request (the server answers, or a one-line error), ``--num-warmups`` requests
awaited, then the timed requests sent at their arrival times (all at once for an ``inf``
rate, Poisson or gamma gaps otherwise), at most ``--max-concurrency`` in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pagedllm import envs

# Only argparse and the standard library at import time: every pagedllm command builds this
# parser, and `pagedllm serve` should not pay for httpx, numpy or transformers.
if TYPE_CHECKING:
    import httpx
    import numpy as np

    from pagedllm.bench.client import Endpoint, RequestResult
    from pagedllm.bench.datasets import SampleRequest
    from pagedllm.bench.metrics import BenchmarkMetrics

INF = float("inf")
ERRORS_SHOWN = 3  # failed requests whose messages are printed above the summary

_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("backend", dict(choices=["openai", "openai-chat"], default="openai",
                     help="openai: /v1/completions; openai-chat: /v1/chat/completions")),
    ("base_url", dict(default=None, help="e.g. http://127.0.0.1:8000 (instead of --host/--port)")),
    ("host", dict(default=None, help="default 127.0.0.1")),
    ("port", dict(type=int, default=None, help="default 8000")),
    ("endpoint", dict(default=None, help="default /v1/completions (/v1/chat/completions "
                                         "for openai-chat)")),
    ("model", dict(default=None, help="default: the first id of GET /v1/models")),
    ("served_model_name", dict(default=None, help="the name sent in requests (default --model)")),
    ("tokenizer", dict(default=None, help="a local tokenizer directory or tokenizer.json "
                                          "(default --model when it is a local directory)")),
    ("dataset_name", dict(choices=["random", "sharegpt"], default="random")),
    ("dataset_path", dict(default=None, help="a ShareGPT JSON file")),
    ("sharegpt_output_len", dict(type=int, default=None)),
    ("random_input_len", dict(type=int, default=1024)),
    ("random_output_len", dict(type=int, default=128)),
    ("random_range_ratio", dict(type=float, default=0.0)),
    ("random_prefix_len", dict(type=int, default=0)),
    ("num_prompts", dict(type=int, default=1000)),
    ("request_rate", dict(type=float, default=None, help="requests/s (default inf: all at once)")),
    ("burstiness", dict(type=float, default=1.0, help="gamma shape of arrival gaps; 1: Poisson")),
    ("max_concurrency", dict(type=int, default=None, help="cap on requests in flight")),
    ("seed", dict(type=int, default=0)),
    ("ignore_eos", dict(action="store_true")),
    ("temperature", dict(type=float, default=0.0, help="default 0: greedy")),
    ("top_p", dict(type=float, default=None)),
    ("top_k", dict(type=int, default=None)),
    ("num_warmups", dict(type=int, default=0)),
    ("disable_tqdm", dict(action="store_true")),
    ("percentile_metrics", dict(default="ttft,tpot,itl", help="of ttft,tpot,itl,e2el")),
    ("metric_percentiles", dict(default="99", help="comma-separated, e.g. 50,90,99")),
    ("save_result", dict(action="store_true")),
    ("result_dir", dict(default=None, help="default: the current directory")),
    ("result_filename", dict(default=None)),
    ("plot", dict(action="store_true", help="write PNGs of the latency CDFs (and of a sweep)")),
    ("sweep_rates", dict(default=None, help="comma-separated request rates, one run each")),
    ("api_key", dict(default=None, help="sent as a bearer token (default $OPENAI_API_KEY)")),
    ("client_processes", dict(type=int, default=None,
                              help="processes that send the timed requests (default: one per "
                                   "64 streams in flight, at most 8 and the CPUs): one Python "
                                   "process cannot read a saturated server's events in time")),
]  # fmt: skip


def add_serve_parser(kinds: Any) -> None:
    """Register ``serve`` among ``pagedllm bench``'s kinds."""
    parser = kinds.add_parser("serve", help="Benchmark a running OpenAI-compatible server.")
    for name, kwargs in _FLAGS:
        spellings = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        parser.add_argument(*spellings, dest=name, **kwargs)
    parser.set_defaults(handler=run_serve)


@dataclass(frozen=True)
class Plan:
    """What the flags ask for, checked: where to send, which rates, what to report."""

    api_url: str
    models_url: str
    headers: dict[str, str]
    rates: list[float]
    sweep: bool
    shown_metrics: list[str]
    shown_percentiles: list[float]

    @property
    def percentiles(self) -> list[float]:
        # P99 is always computed: the result JSON and the sweep table and plot report it.
        return sorted({*self.shown_percentiles, 99.0})


def run_serve(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    return asyncio.run(_benchmark(args, plan))


def plan_from(args: argparse.Namespace) -> Plan:
    _check_counts(args)
    _check_dataset(args)
    base = _base_url(args)
    chat = args.backend == "openai-chat"
    endpoint = args.endpoint or ("/v1/chat/completions" if chat else "/v1/completions")
    if chat != endpoint.rstrip("/").endswith("chat/completions"):
        raise ValueError(f"--endpoint {endpoint} does not fit --backend {args.backend}")
    # The OpenAI clients' variable: a benchmark is a client, not a pagedllm server setting.
    api_key = args.api_key or envs.openai_api_key()
    return Plan(
        api_url=base + endpoint,
        models_url=base + "/v1/models",
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
        rates=_rates(args),
        sweep=args.sweep_rates is not None,
        shown_metrics=_metric_names(args.percentile_metrics),
        shown_percentiles=_percentiles(args.metric_percentiles),
    )


def _check_counts(args: argparse.Namespace) -> None:
    processes, cap = args.client_processes, args.max_concurrency
    if processes is not None and processes < 1:
        raise ValueError(f"--client-processes must be at least 1, got {processes}")
    if processes is not None and cap is not None and processes > cap:
        raise ValueError(f"--client-processes {processes} is more than --max-concurrency {cap}: "
                         "each process keeps at least one request in flight")  # fmt: skip
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be at least 1, got {args.num_prompts}")
    if args.num_warmups < 0:
        raise ValueError(f"--num-warmups must be at least 0, got {args.num_warmups}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be at least 1, got {args.max_concurrency}")
    if not args.burstiness > 0:
        raise ValueError(f"--burstiness must be above 0, got {args.burstiness}")
    if args.result_filename and not args.save_result:
        raise ValueError("--result-filename names the --save-result file; add --save-result")
    if args.result_dir and not (args.save_result or args.plot):
        raise ValueError("--result-dir is where --save-result and --plot write; add one")


def _check_dataset(args: argparse.Namespace) -> None:
    if args.dataset_name == "sharegpt":
        if not args.dataset_path:
            raise ValueError("--dataset-name sharegpt needs --dataset-path FILE")
        if args.sharegpt_output_len is not None and args.sharegpt_output_len < 1:
            raise ValueError(
                f"--sharegpt-output-len must be at least 1, got {args.sharegpt_output_len}"
            )
    elif args.dataset_path or args.sharegpt_output_len is not None:
        raise ValueError("--dataset-path and --sharegpt-output-len are for --dataset-name sharegpt")
    else:
        from pagedllm.bench.datasets import check_random_lengths

        check_random_lengths(
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            args.random_prefix_len,
        )


def _base_url(args: argparse.Namespace) -> str:
    if args.base_url:
        if args.host or args.port:
            raise ValueError("give either --base-url or --host/--port, not both")
        return args.base_url.rstrip("/")
    return f"http://{args.host or '127.0.0.1'}:{args.port or 8000}"


def _rates(args: argparse.Namespace) -> list[float]:
    if args.sweep_rates is None:
        rates = [INF if args.request_rate is None else args.request_rate]
    elif args.request_rate is not None:
        raise ValueError("give either --request-rate or --sweep-rates, not both")
    else:
        try:
            rates = [float(r) for r in args.sweep_rates.split(",") if r.strip()]
        except ValueError as exc:
            raise ValueError(f"--sweep-rates {args.sweep_rates!r}: {exc}") from exc
    if not rates or not all(r > 0 for r in rates):
        raise ValueError("request rates must be above 0 (or inf)")
    return rates


def _metric_names(text: str) -> list[str]:
    from pagedllm.bench.metrics import LATENCY_METRICS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LATENCY_METRICS]
    if unknown:
        raise ValueError(
            f"--percentile-metrics: unknown {unknown}; choose from {','.join(LATENCY_METRICS)}"
        )
    return names


def _percentiles(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise ValueError(f"--metric-percentiles {text!r}: {exc}") from exc
    if not all(0 < p <= 100 for p in values):
        raise ValueError(f"--metric-percentiles must lie in (0, 100], got {text!r}")
    return values


def arrival_times(num: int, rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Send times in seconds from the start of the run: all 0 at an infinite rate; otherwise
    gaps drawn from a gamma distribution of mean 1/rate and shape ``burstiness`` (1 is the
    exponential: Poisson arrivals; below 1 burstier, above 1 more even), the first at 0."""
    import numpy as np

    if rate == INF:
        return np.zeros(num)
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(num - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:num]


async def _benchmark(args: argparse.Namespace, plan: Plan) -> int:
    from pagedllm.bench.client import Endpoint, first_model, make_client
    from pagedllm.bench.datasets import load_tokenizer
    from pagedllm.bench.metrics import sweep_table

    async with make_client(args.max_concurrency) as client:
        model = args.model or await first_model(client, plan.models_url, plan.headers)
        tokenizer_id = _tokenizer_path(args.tokenizer, model)
        tokenizer = load_tokenizer(tokenizer_id)
        endpoint = Endpoint(
            url=plan.api_url,
            model=args.served_model_name or model,
            chat=args.backend == "openai-chat",
            headers=plan.headers,
            sampling=_sampling(args),
            ignore_eos=args.ignore_eos,
        )
        run = _Run(args, plan, model, tokenizer_id, datetime.now().strftime("%Y%m%d-%H%M%S"))
        rows = []
        for i, rate in enumerate(plan.rates):
            # A fresh seed per rate: new prompts, so no run is sped up by an earlier run's
            # prefix cache.
            samples = _samples(args, tokenizer, args.seed + i)
            rows.append((rate, await run.at_rate(client, endpoint, samples, rate, args.seed + i)))
    if plan.sweep:
        print(sweep_table(rows))
        if args.plot:
            run.plot_sweep(rows)
    return 0


def _tokenizer_path(tokenizer: str | None, model: str) -> str:
    if tokenizer:
        return tokenizer
    if Path(model).expanduser().is_dir():
        return model
    raise ValueError(
        f"pass --tokenizer DIR: the model {model!r} is not a local directory, and the "
        "benchmark never downloads a tokenizer"
    )


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    values = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    return {k: v for k, v in values.items() if v is not None}


def _samples(args: argparse.Namespace, tokenizer: Any, seed: int) -> list[SampleRequest]:
    """The test request's prompt, then the warm-ups', then the timed ones': separate draws,
    so the timed requests do not find their own prompts in a prefix cache."""
    from pagedllm.bench.datasets import random_requests, sharegpt_requests

    num = 1 + args.num_warmups + args.num_prompts
    if args.dataset_name == "sharegpt":
        return sharegpt_requests(args.dataset_path, tokenizer, num, args.sharegpt_output_len, seed)
    return random_requests(
        tokenizer, num, args.random_input_len, args.random_output_len,
        args.random_range_ratio, args.random_prefix_len, seed,
    )  # fmt: skip


@dataclass(frozen=True)
class _Run:
    """One invocation: the flags, and the names its outputs are filed under."""

    args: argparse.Namespace
    plan: Plan
    model_id: str
    tokenizer_id: str
    stamp: str  # YYYYMMDD-HHMMSS, as in vLLM's file names

    async def at_rate(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        samples: Sequence[SampleRequest],
        rate: float,
        seed: int,
    ) -> BenchmarkMetrics:
        from pagedllm.bench.metrics import calculate_metrics
        from pagedllm.bench.sender_pool import client_processes, send_from_processes

        args = self.args
        warmups = samples[1 : 1 + args.num_warmups]
        timed = samples[1 + args.num_warmups :]
        await _initial_test(client, endpoint, samples[0])
        await _warm_up(client, endpoint, warmups, args.max_concurrency, args.disable_tqdm)
        _print_traffic(rate, args.burstiness, args.max_concurrency)
        times = arrival_times(len(timed), rate, args.burstiness, seed)
        in_flight = min(len(timed), args.max_concurrency or len(timed))
        processes = client_processes(args.client_processes, in_flight)
        if processes > 1:
            results, duration = await asyncio.to_thread(
                send_from_processes, endpoint, timed, times, args.max_concurrency, processes,
                args.disable_tqdm,
            )  # fmt: skip
        else:
            results, duration = await send_all(
                client, endpoint, timed, times, args.max_concurrency, args.disable_tqdm
            )
        metrics = calculate_metrics(results, duration, self.plan.percentiles)
        self.report(rate, metrics, results)
        return metrics

    def report(
        self, rate: float, metrics: BenchmarkMetrics, results: Sequence[RequestResult]
    ) -> None:
        from pagedllm.bench.metrics import latency_samples_ms, summary_text

        args, plan = self.args, self.plan
        errors = [r.error for r in results if not r.success]
        if errors:
            print(f"{len(errors)} requests failed; the first errors:")
            for error in errors[:ERRORS_SHOWN]:
                print(f"  {error}")
        print(
            summary_text(
                metrics, plan.shown_metrics, plan.shown_percentiles, rate, args.max_concurrency
            )
        )
        if not (args.save_result or args.plot):
            return
        path = self.result_path(rate)
        if args.save_result:
            record = self.record(rate, metrics, results)
            path.write_text(json.dumps(record, indent=2))
            print(f"Saved the result to {path}")
        if args.plot:
            from pagedllm.bench.plot import plot_latency_cdfs

            title = f"{self._model_name()} at {rate} req/s ({args.backend})"
            png = plot_latency_cdfs(latency_samples_ms(results), path.with_suffix(".png"), title)
            print(f"Saved the latency CDFs to {png}")

    def record(
        self, rate: float, metrics: BenchmarkMetrics, results: Sequence[RequestResult]
    ) -> dict[str, Any]:
        from pagedllm.bench.metrics import result_fields

        return {
            "date": self.stamp,
            "backend": self.args.backend,
            "model_id": self.model_id,
            "tokenizer_id": self.tokenizer_id,
            "num_prompts": self.args.num_prompts,
            "request_rate": rate if math.isfinite(rate) else "inf",  # JSON has no infinity
            "burstiness": self.args.burstiness,
            "max_concurrency": self.args.max_concurrency,
            **result_fields(metrics, results),
        }

    def result_path(self, rate: float) -> Path:
        """vLLM's name, ``{backend}-{rate}qps[-concurrency{c}]-{model}-{stamp}.json``, unless
        --result-filename names it (then a sweep adds ``-{rate}qps`` to tell runs apart)."""
        directory = self._directory()
        if self.args.result_filename:
            name = Path(self.args.result_filename)
            if self.plan.sweep:
                name = name.with_name(f"{name.stem}-{rate}qps{name.suffix or '.json'}")
            return directory / name
        return directory / f"{self._stem(f'{rate}qps')}.json"

    def plot_sweep(self, rows: Sequence[tuple[float, BenchmarkMetrics]]) -> None:
        from pagedllm.bench.plot import plot_sweep

        if self.args.result_filename:
            name = f"{Path(self.args.result_filename).stem}-sweep.png"
        else:
            name = f"{self._stem('sweep')}.png"
        png = plot_sweep(
            [rate for rate, _ in rows],
            [m.output_throughput for _, m in rows],
            [m.latencies["ttft"].percentiles[99] for _, m in rows],
            self._directory() / name,
            f"{self._model_name()} ({self.args.backend}): request rate sweep",
        )
        print(f"Saved the sweep plot to {png}")

    def _stem(self, middle: str) -> str:
        concurrency = self.args.max_concurrency
        cap = f"-concurrency{concurrency}" if concurrency is not None else ""
        return f"{self.args.backend}-{middle}{cap}-{self._model_name()}-{self.stamp}"

    def _model_name(self) -> str:
        return Path(self.model_id.rstrip("/")).name

    def _directory(self) -> Path:
        directory = Path(self.args.result_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        return directory


async def _initial_test(
    client: httpx.AsyncClient, endpoint: Endpoint, sample: SampleRequest
) -> None:
    from pagedllm.bench.client import send

    print("Starting initial single prompt test run...")
    result = await send(client, endpoint, sample)
    if not result.success:
        raise ValueError(
            f"the test request to {endpoint.url} failed: {result.error} (check --base-url or "
            "--host/--port, --endpoint, --model/--served-model-name and --api-key)"
        )
    print("Initial test run completed. Starting main benchmark run...")


async def _warm_up(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    samples: Sequence[SampleRequest],
    max_concurrency: int | None,
    disable_tqdm: bool,
) -> None:
    import numpy as np

    if not samples:
        return
    print(f"Warming up with {len(samples)} requests...")
    results, _ = await send_all(
        client, endpoint, samples, np.zeros(len(samples)), max_concurrency, disable_tqdm
    )
    failed = sum(not r.success for r in results)
    print(f"Warmup run completed ({failed} failed)." if failed else "Warmup run completed.")


def _print_traffic(rate: float, burstiness: float, max_concurrency: int | None) -> None:
    shape = "Poisson process" if burstiness == 1.0 else "Gamma distribution"
    print(f"Traffic request rate: {rate}")
    print(f"Burstiness factor: {burstiness} ({shape})")
    print(f"Maximum request concurrency: {max_concurrency}")


async def send_all(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    samples: Sequence[SampleRequest],
    times: Sequence[float],
    max_concurrency: int | None,
    disable_tqdm: bool,
) -> tuple[list[RequestResult], float]:
    """Send each sample at its time (seconds from now), at most ``max_concurrency`` in
    flight; return the results in sample order and the seconds until the last one ended."""
    from tqdm import tqdm

    from pagedllm.bench.client import send

    gate: Any = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    bar = tqdm(total=len(samples), disable=disable_tqdm)

    async def one(sample: SampleRequest) -> RequestResult:
        async with gate:
            result = await send(client, endpoint, sample)
        bar.update(1)
        return result

    start = time.perf_counter()
    tasks = []
    for sample, at in zip(samples, times):
        # Absolute times, so the sleeps' overshoots do not add up over a long run.
        await asyncio.sleep(max(0.0, start + float(at) - time.perf_counter()))
        tasks.append(asyncio.create_task(one(sample)))
    results = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    bar.close()
    return list(results), duration
