"""The numbers of a serving benchmark run, and their text in vLLM's layout: throughputs over
the run, and the distributions of TTFT, TPOT, ITL and E2E latency over successful requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pagedllm.bench.client import RequestResult

# name -> (short label, section header), in vLLM's order.
LATENCY_METRICS = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
}
WIDTH = 50  # of vLLM's summary block


@dataclass(frozen=True)
class Distribution:
    """Of one latency metric, in milliseconds."""

    mean: float
    median: float
    std: float
    percentiles: dict[float, float]


@dataclass(frozen=True)
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    duration: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float  # the busiest one-second bin of streamed text
    max_concurrent_requests: int  # the most requests in flight at any instant
    latencies: dict[str, Distribution]  # by LATENCY_METRICS name


def latency_samples_ms(results: Sequence[RequestResult]) -> dict[str, list[float]]:
    """Each latency metric's samples over the successful requests, in milliseconds. TPOT is
    per request, (e2e - ttft) / (output_tokens - 1); ITL pools every gap of every request."""
    ok = [r for r in results if r.success]
    return {
        "ttft": [r.ttft * 1000 for r in ok],
        "tpot": [
            (r.latency - r.ttft) / (r.output_tokens - 1) * 1000 for r in ok if r.output_tokens > 1
        ],
        "itl": [gap * 1000 for r in ok for gap in r.itl],
        "e2el": [r.latency * 1000 for r in ok],
    }


def calculate_metrics(
    results: Sequence[RequestResult], duration: float, percentiles: Sequence[float]
) -> BenchmarkMetrics:
    ok = [r for r in results if r.success]
    total_input = sum(r.prompt_len for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    samples = latency_samples_ms(results)
    return BenchmarkMetrics(
        completed=len(ok),
        failed=len(results) - len(ok),
        total_input=total_input,
        total_output=total_output,
        duration=duration,
        request_throughput=len(ok) / duration,
        output_throughput=total_output / duration,
        total_token_throughput=(total_input + total_output) / duration,
        max_output_tokens_per_s=_peak_output_per_s(ok),
        max_concurrent_requests=_peak_in_flight(results),
        latencies={name: distribution(samples[name], percentiles) for name in LATENCY_METRICS},
    )


def distribution(values_ms: Sequence[float], percentiles: Sequence[float]) -> Distribution:
    # No samples (every request failed) reads as zeros, as in vLLM, rather than NaN.
    values = np.asarray(values_ms if len(values_ms) else [0.0], dtype=float)
    return Distribution(
        mean=float(np.mean(values)),
        median=float(np.median(values)),
        std=float(np.std(values)),
        percentiles={p: float(np.percentile(values, p)) for p in percentiles},
    )


def _peak_output_per_s(ok: Sequence[RequestResult]) -> float:
    if not ok:
        return 0.0
    origin = min(r.start for r in ok)
    stamps = [r.start - origin + r.ttft + np.cumsum([0.0, *r.itl]) for r in ok]
    return float(np.bincount(np.concatenate(stamps).astype(int)).max())


def _peak_in_flight(results: Sequence[RequestResult]) -> int:
    # Ends sort before starts at the same instant: a request that ends as another starts
    # does not overlap it.
    events = sorted([(r.start, 1) for r in results] + [(r.start + r.latency, -1) for r in results])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def percentile_label(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def summary_text(
    m: BenchmarkMetrics,
    shown_metrics: Sequence[str],
    shown_percentiles: Sequence[float],
    request_rate: float,
    max_concurrency: int | None,
) -> str:
    """vLLM's summary block, line for line."""
    lines = [" Serving Benchmark Result ".center(WIDTH, "=")]
    lines += [
        _row("Successful requests:", m.completed),
        _row("Failed requests:", m.failed),
    ]
    if max_concurrency is not None:
        lines.append(_row("Maximum request concurrency:", max_concurrency))
    if request_rate != float("inf"):
        lines.append(_row("Request rate configured (RPS):", f"{request_rate:.2f}"))
    lines += [
        _row("Benchmark duration (s):", f"{m.duration:.2f}"),
        _row("Total input tokens:", m.total_input),
        _row("Total generated tokens:", m.total_output),
        _row("Request throughput (req/s):", f"{m.request_throughput:.2f}"),
        _row("Output token throughput (tok/s):", f"{m.output_throughput:.2f}"),
        _row("Peak output token throughput (tok/s):", f"{m.max_output_tokens_per_s:.2f}"),
        _row("Peak concurrent requests:", f"{m.max_concurrent_requests:.2f}"),
        _row("Total Token throughput (tok/s):", f"{m.total_token_throughput:.2f}"),
    ]
    for name, (label, header) in LATENCY_METRICS.items():
        if name in shown_metrics:
            lines += _section(m.latencies[name], label, header, shown_percentiles)
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def _section(d: Distribution, label: str, header: str, percentiles: Sequence[float]) -> list[str]:
    lines = [
        header.center(WIDTH, "-"),
        _row(f"Mean {label} (ms):", f"{d.mean:.2f}"),
        _row(f"Median {label} (ms):", f"{d.median:.2f}"),
    ]
    for p in percentiles:
        lines.append(_row(f"P{percentile_label(p)} {label} (ms):", f"{d.percentiles[p]:.2f}"))
    return lines


def _row(name: str, value: Any) -> str:
    return f"{name:<40} {value!s:<10}"


def result_fields(m: BenchmarkMetrics, results: Sequence[RequestResult]) -> dict[str, Any]:
    """The run's numbers under vLLM's result-JSON keys (``mean_ttft_ms``, ``p99_itl_ms``, ...)
    and the per-request lists (seconds, as vLLM writes them)."""
    fields: dict[str, Any] = {
        "duration": m.duration,
        "completed": m.completed,
        "failed": m.failed,
        "total_input_tokens": m.total_input,
        "total_output_tokens": m.total_output,
        "request_throughput": m.request_throughput,
        "output_throughput": m.output_throughput,
        "total_token_throughput": m.total_token_throughput,
        "max_output_tokens_per_s": m.max_output_tokens_per_s,
        "max_concurrent_requests": m.max_concurrent_requests,
    }
    for name, d in m.latencies.items():
        fields[f"mean_{name}_ms"] = d.mean
        fields[f"median_{name}_ms"] = d.median
        fields[f"std_{name}_ms"] = d.std
        for p, value in d.percentiles.items():
            fields[f"p{percentile_label(p)}_{name}_ms"] = value
    fields |= {
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_tokens if r.success else 0 for r in results],
        "ttfts": [r.ttft if r.success else 0.0 for r in results],
        "itls": [r.itl for r in results],
        "generated_texts": [r.generated_text for r in results],
        "errors": [r.error for r in results],
    }
    return fields


def sweep_table(rows: Sequence[tuple[float, BenchmarkMetrics]]) -> str:
    """One line per request rate of a sweep."""
    columns = ["Rate (req/s)", "Completed", "Failed", "Req/s", "Output tok/s",
               "Mean TTFT (ms)", "P99 TTFT (ms)", "Mean TPOT (ms)", "Mean ITL (ms)"]  # fmt: skip
    header = "  ".join(columns)
    lines = [" Request Rate Sweep ".center(len(header), "="), header]
    for rate, m in rows:
        ttft, tpot, itl = m.latencies["ttft"], m.latencies["tpot"], m.latencies["itl"]
        values = [str(rate), m.completed, m.failed, f"{m.request_throughput:.2f}",
                  f"{m.output_throughput:.2f}", f"{ttft.mean:.2f}", f"{ttft.percentiles[99]:.2f}",
                  f"{tpot.mean:.2f}", f"{itl.mean:.2f}"]  # fmt: skip
        lines.append("  ".join(f"{v!s:>{len(c)}}" for v, c in zip(values, columns)))
    lines.append("=" * len(header))
    return "\n".join(lines)
