"""Prometheus metrics at ``/metrics``: vLLM 0.26's metrics of a text-generation model, same
names with the prefix ``pagedllm:``, same labels (``model_name``, ``engine``) and buckets.

Each server owns its registry (tests start several servers in one process). With several
API servers (``--api-server-count``) the supervisor gives them one directory in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode): each process writes
its values there and any server's ``/metrics`` adds them all up. Every server sees the
engine-wide counts, so only the first records them (``engine_wide``); each records the
latencies, prompts and outcomes of the requests it served.
"""

from __future__ import annotations

import dataclasses
import os

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from pagedllm.config import CacheConfig
from pagedllm.metrics.stats import EngineSnapshot, FinishedRequestStats, IterationStats

_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0]  # fmt: skip
_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
_ITERATION_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
FINISH_REASONS = ("stop", "length", "abort", "error")  # every FinishReason, as vLLM
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
ENGINE = "0"  # one engine core (vLLM labels each data-parallel engine)


def multiprocess_dir() -> str | None:
    """Where the processes of one server write their values (multiprocess mode), if set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class PrometheusStatLogger:
    def __init__(
        self,
        model_name: str,
        max_model_len: int,
        cache_config: CacheConfig,
        registry: CollectorRegistry | None = None,
        engine_wide: bool = True,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.engine_wide = engine_wide
        self.process_metrics = False
        labels = ["model_name", "engine"]
        values = (model_name, ENGINE)
        reg = self.registry

        def gauge(name: str, doc: str, extra: list[str] | None = None) -> Gauge:
            # Only the first server sets them; across processes, its latest value counts.
            return Gauge(f"pagedllm:{name}", doc, labels + (extra or []), registry=reg,
                         multiprocess_mode="livemostrecent")  # fmt: skip

        def counter(name: str, doc: str, extra: list[str] | None = None) -> Counter:
            return Counter(f"pagedllm:{name}", doc, labels + (extra or []), registry=reg)

        def histogram(name: str, doc: str, buckets: list[float] | list[int]) -> Histogram:
            metric = Histogram(f"pagedllm:{name}", doc, labels, buckets=buckets, registry=reg)
            return metric.labels(*values)

        tokens = build_1_2_5_buckets(max_model_len)
        # Scheduler state (engine-wide).
        self.running = gauge("num_requests_running", "Requests in the running batch.").labels(
            *values
        )
        self.waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.").labels(
            *values
        )
        by_reason = gauge(
            "num_requests_waiting_by_reason",
            "Waiting requests by reason: 'capacity' = waiting for room in the batch or KV "
            "cache; 'deferred' = held back by something else (a grammar still compiling). "
            "They add up to num_requests_waiting.",
            ["reason"],
        )
        self.waiting_by_reason = {r: by_reason.labels(*values, r) for r in WAITING_REASONS}
        sleep = gauge(
            "engine_sleep_state", "Engine sleep state (pagedllm never sleeps: awake = 1).",
            ["sleep_state"],
        )  # fmt: skip
        self.sleep_state = {s: sleep.labels(*values, s) for s in SLEEP_STATES}
        self.kv_usage = gauge("kv_cache_usage_perc", "KV cache usage (1 = full).").labels(*values)
        self.prefix_queries = counter(
            "prefix_cache_queries", "Prefix cache lookups (tokens)."
        ).labels(*values)
        self.prefix_hits = counter("prefix_cache_hits", "Prefix cache hits (tokens).").labels(
            *values
        )
        # The host tier (swap_space): vLLM 0.x's cpu_cache_usage_perc, and its prefix
        # lookups as counters (the hit rate is hits / queries over a window, as above).
        self.cpu_usage = gauge(
            "cpu_cache_usage_perc", "Host (swap space) KV tier usage (1 = full; 0 without one)."
        ).labels(*values)
        self.cpu_prefix_queries = counter(
            "cpu_prefix_cache_queries",
            "Prefix tokens looked up in the host KV tier (those the device cache missed).",
        ).labels(*values)
        self.cpu_prefix_hits = counter(
            "cpu_prefix_cache_hits", "Prefix tokens found in the host KV tier (copied back)."
        ).labels(*values)
        self.preemptions = counter("num_preemptions", "Requests preempted.").labels(*values)
        self.iteration_tokens = histogram(
            "iteration_tokens_total", "Tokens per engine step (computed prompt + generated).",
            _ITERATION_BUCKETS,
        )  # fmt: skip
        # Per request (each server its own).
        self.prompt_tokens = counter(
            "prompt_tokens", "Prompt tokens of requests whose prefill finished (cached included)."
        ).labels(*values)
        by_source = counter("prompt_tokens_by_source", "Prompt tokens by source.", ["source"])
        self.prompt_by_source = {s: by_source.labels(*values, s) for s in PROMPT_SOURCES}
        self.prompt_cached = counter(
            "prompt_tokens_cached", "Prompt tokens served from the prefix cache."
        ).labels(*values)
        self.generation_tokens = counter("generation_tokens", "Tokens generated.").labels(*values)
        success = counter("request_success", "Finished requests.", ["finished_reason"])
        self.success = {r: success.labels(*values, r) for r in FINISH_REASONS}
        self.prompt_len = histogram("request_prompt_tokens", "Prompt tokens per request.", tokens)
        self.generation_len = histogram(
            "request_generation_tokens", "Generated tokens per request.", tokens
        )
        self.max_generation_len = histogram(
            "request_max_num_generation_tokens",
            "The longest sample's generated tokens, per request.",
            tokens,
        )
        self.params_n = histogram("request_params_n", "The n parameter.", [1, 2, 5, 10, 20])
        self.params_max_tokens = histogram(
            "request_params_max_tokens", "The max_tokens parameter.", tokens
        )
        self.prefill_kv_computed = histogram(
            "request_prefill_kv_computed_tokens",
            "Prompt tokens computed in prefill (the cached ones excluded), per request.",
            tokens,
        )
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self.itl = histogram(
            "inter_token_latency_seconds", "Time between output tokens.", _ITL_BUCKETS
        )
        self.tpot = histogram(
            "request_time_per_output_token_seconds",
            "Mean time per output token (after the first), per request.",
            _ITL_BUCKETS,
        )
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to finish.", _LATENCY_BUCKETS)
        self.queue_time = histogram(
            "request_queue_time_seconds", "Time waiting to be scheduled.", _LATENCY_BUCKETS
        )
        self.inference_time = histogram(
            "request_inference_time_seconds", "First scheduled to last token.", _LATENCY_BUCKETS
        )
        self.prefill_time = histogram(
            "request_prefill_time_seconds", "First scheduled to first token.", _LATENCY_BUCKETS
        )
        self.decode_time = histogram(
            "request_decode_time_seconds", "First token to last token.", _LATENCY_BUCKETS
        )
        if engine_wide:
            self.sleep_state["awake"].set(1)
            self.sleep_state["weights_offloaded"].set(0)
            self.sleep_state["discard_all"].set(0)
            # An info metric as a gauge at 1 (multiprocess mode has no Info), as vLLM.
            info = {f.name: str(getattr(cache_config, f.name))
                    for f in dataclasses.fields(cache_config)}  # fmt: skip
            info["engine"] = ENGINE
            Gauge("pagedllm:cache_config_info", "The engine's cache configuration.",
                  list(info), registry=reg, multiprocess_mode="livemostrecent",
                  ).labels(**info).set(1)  # fmt: skip

    def add_process_metrics(self) -> None:
        """process_*, python_gc_* and python_info of this process, as vLLM's default
        registry shows them (a server's; the offline LLM leaves them out)."""
        self.process_metrics = True
        _add_process_collectors(self.registry)

    def record(self, step: IterationStats, snapshot: EngineSnapshot) -> None:
        if self.engine_wide:
            self._record_engine(step, snapshot)
        self.prompt_tokens.inc(step.num_prefilled_prompt_tokens)
        computed = step.num_prefilled_prompt_tokens - step.num_cached_prompt_tokens
        self.prompt_by_source["local_compute"].inc(computed)
        self.prompt_by_source["local_cache_hit"].inc(step.num_cached_prompt_tokens)
        self.prompt_cached.inc(step.num_cached_prompt_tokens)
        for value in step.time_to_first_tokens:
            self.ttft.observe(value)
        for value in step.inter_token_latencies:
            self.itl.observe(value)
        for n in step.n_params:
            self.params_n.observe(n)
        for longest in step.max_num_generation_tokens:
            self.max_generation_len.observe(longest)
        for finished in step.finished:
            self._record_finished(finished)

    def _record_finished(self, finished: FinishedRequestStats) -> None:
        self.success[finished.finish_reason].inc()
        self.e2e.observe(finished.e2e_latency)
        self.queue_time.observe(finished.queued_time)
        self.prefill_time.observe(finished.prefill_time)
        self.inference_time.observe(finished.inference_time)
        self.decode_time.observe(finished.decode_time)
        self.tpot.observe(finished.mean_time_per_output_token)
        self.prompt_len.observe(finished.num_prompt_tokens)
        self.generation_len.observe(finished.num_generation_tokens)
        self.prefill_kv_computed.observe(
            finished.num_prompt_tokens - max(finished.num_cached_tokens, 0)
        )
        if finished.max_tokens_param:
            self.params_max_tokens.observe(finished.max_tokens_param)

    def _record_engine(self, step: IterationStats, snapshot: EngineSnapshot) -> None:
        self.running.set(snapshot.num_running)
        self.waiting.set(snapshot.num_waiting)
        deferred = snapshot.num_waiting_deferred
        self.waiting_by_reason["capacity"].set(snapshot.num_waiting - deferred)
        self.waiting_by_reason["deferred"].set(deferred)
        self.kv_usage.set(snapshot.kv_cache_usage)
        self.generation_tokens.inc(step.num_generation_tokens)
        self.preemptions.inc(step.num_preempted)
        self.prefix_queries.inc(snapshot.prefix_cache_queries)
        self.prefix_hits.inc(snapshot.prefix_cache_hits)
        self.cpu_usage.set(snapshot.cpu_cache_usage)
        self.cpu_prefix_queries.inc(snapshot.cpu_prefix_cache_queries)
        self.cpu_prefix_hits.inc(snapshot.cpu_prefix_cache_hits)
        if step.step_seconds > 0:  # a step ran (not an idle report)
            self.iteration_tokens.observe(step.num_prompt_tokens + step.num_generation_tokens)

    def exposition(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)
        if self.process_metrics:  # this process's own (the files hold none)
            _add_process_collectors(merged)
        return generate_latest(merged)


def _add_process_collectors(registry: CollectorRegistry) -> None:
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
