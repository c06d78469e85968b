"""``from pagedllm.v1.metrics.reader import Counter``, as vLLM code imports it."""

from pagedllm.metrics.reader import Counter, Gauge, Histogram, Metric

__all__ = ["Counter", "Gauge", "Histogram", "Metric"]
