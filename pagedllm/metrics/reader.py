"""A snapshot of the engine's Prometheus metrics as plain objects, for ``LLM.get_metrics()``
(the shapes of vLLM's ``vllm.v1.metrics.reader``): each labelled series of a counter, gauge
or histogram becomes one ``Counter``, ``Gauge`` or ``Histogram``."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client import Metric as MetricFamily


@dataclass
class Metric:
    name: str
    labels: dict[str, str]


@dataclass
class Counter(Metric):
    """Monotonically increasing (its ``_total`` sample)."""

    value: int


@dataclass
class Gauge(Metric):
    value: float


@dataclass
class Histogram(Metric):
    """``buckets`` maps each upper bound (the ``le`` label, "+Inf" included) to the
    cumulative count; ``count`` equals the "+Inf" bucket."""

    count: int
    sum: float
    buckets: dict[str, int]


def metrics_snapshot(registry: CollectorRegistry) -> list[Metric]:
    collected: list[Metric] = []
    for family in registry.collect():
        if not family.name.startswith("pagedllm:"):
            continue  # HTTP and process metrics: the server's, not the engine's (as vLLM)
        if family.type == "gauge":
            collected += [Gauge(family.name, s.labels, s.value) for s in family.samples]
        elif family.type == "counter":
            collected += [
                Counter(family.name, s.labels, int(s.value))
                for s in family.samples
                if s.name == family.name + "_total"
            ]
        elif family.type == "histogram":
            collected += _histograms(family)
    return collected


def _histograms(family: MetricFamily) -> list[Histogram]:
    """One Histogram per label set (the ``le`` label aside)."""
    series: dict[frozenset, Histogram] = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = frozenset(labels.items())
        histogram = series.setdefault(key, Histogram(family.name, labels, 0, 0.0, {}))
        if sample.name.endswith("_bucket"):
            histogram.buckets[sample.labels["le"]] = int(sample.value)
        elif sample.name.endswith("_count"):
            histogram.count = int(sample.value)
        elif sample.name.endswith("_sum"):
            histogram.sum = sample.value
    return list(series.values())
