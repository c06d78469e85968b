"""PNG charts of a serving benchmark: the latency CDFs of one run, and throughput and P99 TTFT
against request rate for a sweep. matplotlib is imported only here, only when asked for
(``pip install pagedllm[bench]``), and draws on the non-interactive Agg canvas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pagedllm.bench.metrics import LATENCY_METRICS


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ValueError("--plot needs matplotlib: pip install 'pagedllm[bench]'") from exc
    # A bare Figure on an Agg canvas: no pyplot, no global backend, no display needed.
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_latency_cdfs(samples_ms: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """One panel per latency metric (TTFT, TPOT, ITL, E2EL): the fraction of samples at or
    below each latency."""
    import numpy as np

    figure = _figure(10, 7)
    figure.suptitle(title)
    for axes, (name, (label, header)) in zip(figure.subplots(2, 2).flat, LATENCY_METRICS.items()):
        values = np.sort(np.asarray(samples_ms.get(name, []), dtype=float))
        if len(values):
            # From 0 at the smallest sample, so that even one sample draws a visible step.
            fractions = np.arange(len(values) + 1) / len(values)
            axes.step(np.concatenate([values[:1], values]), fractions, where="post")
        else:
            axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(f"{header} ({label})")
        axes.set_xlabel("ms")
        axes.set_ylabel("fraction of samples")
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
    figure.savefig(path, format="png", dpi=100)
    return path


def plot_sweep(
    rates: Sequence[float],
    output_throughputs: Sequence[float],
    p99_ttfts_ms: Sequence[float],
    path: Path,
    title: str,
) -> Path:
    """Output token throughput and P99 TTFT against request rate. Rates are evenly spaced
    categories, so that ``inf`` has a place on the axis."""
    figure = _figure(11, 4.5)
    figure.suptitle(title)
    labels = [str(rate) for rate in rates]
    positions = list(range(len(rates)))
    panels = [
        (output_throughputs, "Output token throughput (tok/s)"),
        (p99_ttfts_ms, "P99 TTFT (ms)"),
    ]
    for axes, (values, label) in zip(figure.subplots(1, 2), panels):
        axes.plot(positions, values, marker="o")
        axes.set_xticks(positions, labels)
        axes.set_xlabel("request rate (req/s)")
        axes.set_ylabel(label)
        axes.set_title(label)
        axes.grid(alpha=0.3)
    figure.savefig(path, format="png", dpi=100)
    return path
