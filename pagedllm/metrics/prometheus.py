"""Prometheus metrics at ``/metrics``: vLLM's metric names, with the prefix ``pagedllm:``.

Each server owns its registry (tests start several servers in one process). With several
API servers (``--api-server-count``) the supervisor gives them one directory in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode): each process writes
its values there and any server's ``/metrics`` adds them all up. Every server sees the
engine-wide counts, so only the first records them (``engine_wide``); each records the
latencies and outcomes of the requests it served.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from pagedllm.metrics.stats import EngineSnapshot, IterationStats

_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0]  # fmt: skip
_E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort", "error")  # every FinishReason, as vLLM


def multiprocess_dir() -> str | None:
    """Where the processes of one server write their values (multiprocess mode), if set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PrometheusStatLogger:
    def __init__(
        self, model_name: str, registry: CollectorRegistry | None = None, engine_wide: bool = True
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.engine_wide = engine_wide
        labels = ["model_name"]
        reg = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            # Only the first server sets them; across processes, its latest value counts.
            return Gauge(f"pagedllm:{name}", doc, labels, registry=reg,
                         multiprocess_mode="livemostrecent")  # fmt: skip

        def counter(name: str, doc: str, extra: list[str] | None = None) -> Counter:
            return Counter(f"pagedllm:{name}", doc, labels + (extra or []), registry=reg)

        def histogram(name: str, doc: str, buckets: list[float]) -> Histogram:
            return Histogram(f"pagedllm:{name}", doc, labels, buckets=buckets, registry=reg)

        m = model_name
        self.running = gauge("num_requests_running", "Requests in the running batch.").labels(m)
        self.waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.").labels(m)
        self.kv_usage = gauge("kv_cache_usage_perc", "KV cache usage (1 = full).").labels(m)
        self.prompt_tokens = counter("prompt_tokens", "Prefill tokens computed.").labels(m)
        self.generation_tokens = counter("generation_tokens", "Tokens generated.").labels(m)
        self.preemptions = counter("num_preemptions", "Requests preempted.").labels(m)
        self.prefix_queries = counter(
            "prefix_cache_queries", "Prefix cache lookups (tokens)."
        ).labels(m)
        self.prefix_hits = counter("prefix_cache_hits", "Prefix cache hits (tokens).").labels(m)
        success = counter("request_success", "Finished requests.", ["finished_reason"])
        self.success = {r: success.labels(m, r) for r in FINISH_REASONS}
        self.ttft = histogram(
            "time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS
        ).labels(m)
        self.itl = histogram(
            "inter_token_latency_seconds", "Time between output tokens.", _ITL_BUCKETS
        ).labels(m)
        self.e2e = histogram(
            "e2e_request_latency_seconds", "Arrival to finish.", _E2E_BUCKETS
        ).labels(m)

    def record(self, step: IterationStats, snapshot: EngineSnapshot) -> None:
        if self.engine_wide:
            self._record_engine(step, snapshot)
        for value in step.time_to_first_tokens:
            self.ttft.observe(value)
        for value in step.inter_token_latencies:
            self.itl.observe(value)
        for finished in step.finished:
            self.e2e.observe(finished.e2e_latency)
            self.success[finished.finish_reason].inc()

    def _record_engine(self, step: IterationStats, snapshot: EngineSnapshot) -> None:
        self.running.set(snapshot.num_running)
        self.waiting.set(snapshot.num_waiting)
        self.kv_usage.set(snapshot.kv_cache_usage)
        self.prompt_tokens.inc(step.num_prompt_tokens)
        self.generation_tokens.inc(step.num_generation_tokens)
        self.preemptions.inc(step.num_preempted)
        self.prefix_queries.inc(snapshot.prefix_cache_queries)
        self.prefix_hits.inc(snapshot.prefix_cache_hits)

    def exposition(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)
        return generate_latest(merged)
