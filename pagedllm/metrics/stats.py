"""Counters one engine step produces, and the periodic throughput log line."""

from __future__ import annotations

import statistics
import time
from typing import Protocol

import msgspec

from pagedllm import envs
from pagedllm.logger import init_logger

logger = init_logger(__name__)


class FinishedRequestStats(msgspec.Struct, array_like=True):
    """One finished request (a request with n > 1 counts once). The phases follow vLLM:
    queued (engine core received it -> first scheduled), prefill (-> first token), decode
    (first -> last token), inference (scheduled -> last token); 0 for a phase never
    reached (a request aborted while waiting has only a queue time)."""

    finish_reason: str  # "stop", "length", "abort" or "error"
    e2e_latency: float  # seconds from arrival to the last output
    num_prompt_tokens: int
    num_generation_tokens: int
    max_tokens_param: int | None = None
    num_cached_tokens: int = 0
    queued_time: float = 0.0
    prefill_time: float = 0.0
    decode_time: float = 0.0
    inference_time: float = 0.0
    mean_time_per_output_token: float = 0.0


class IterationStats(msgspec.Struct, array_like=True):
    """What one step computed (prompt tokens: prefill and recompute; sampled tokens) and the
    per-request latencies observed while processing its outputs. The engine fills the
    counts; the front end adds the latencies and what it learns when a request's prefill
    ends or it finishes (msgspec: it crosses between processes)."""

    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_preempted: int = 0
    step_seconds: float = 0.0  # the engine step's wall time (0 when none ran)
    time_to_first_tokens: list[float] = msgspec.field(default_factory=list)
    inter_token_latencies: list[float] = msgspec.field(default_factory=list)
    finished: list[FinishedRequestStats] = msgspec.field(default_factory=list)
    # Front end, per request whose first token arrived: its prompt, and the part of it
    # the prefix cache served (vLLM's prompt_tokens and prompt_tokens_cached).
    num_prefilled_prompt_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    # Front end, per finished user request: its n, and its longest sample's token count.
    n_params: list[int] = msgspec.field(default_factory=list)
    max_num_generation_tokens: list[int] = msgspec.field(default_factory=list)


class EngineSnapshot(msgspec.Struct, array_like=True):
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    # Of num_waiting, those held back by something other than capacity (a grammar still
    # compiling): vLLM's "deferred" reason.
    num_waiting_deferred: int = 0
    # The host tier of the prefix cache (swap_space): whether there is one, its usage, and
    # tokens looked up there (those past the device hits) and found.
    host_tier: bool = False
    cpu_cache_usage: float = 0.0
    cpu_prefix_cache_queries: int = 0
    cpu_prefix_cache_hits: int = 0


class StatLogger(Protocol):
    def record(self, step: IterationStats, snapshot: EngineSnapshot) -> None: ...


class LoggingStatLogger:
    """Logs, every PAGEDLLM_LOG_STATS_INTERVAL seconds, a line like vLLM's."""

    def __init__(self) -> None:
        self.interval = envs.log_stats_interval()
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.last_log = now
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.host_queries = 0
        self.host_hits = 0
        self.step_seconds: list[float] = []

    def record(self, step: IterationStats, snapshot: EngineSnapshot) -> None:
        if step.step_seconds > 0:
            self.step_seconds.append(step.step_seconds)
        self.prompt_tokens += step.num_prompt_tokens
        self.generation_tokens += step.num_generation_tokens
        self.prefix_queries += snapshot.prefix_cache_queries
        self.prefix_hits += snapshot.prefix_cache_hits
        self.host_queries += snapshot.cpu_prefix_cache_queries
        self.host_hits += snapshot.cpu_prefix_cache_hits
        now = time.monotonic()
        if now - self.last_log >= self.interval:
            self.log(snapshot, now)

    def log(self, snapshot: EngineSnapshot, now: float) -> None:
        elapsed = max(now - self.last_log, 1e-9)
        hit_rate = 100.0 * self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
        step_ms = 1e3 * statistics.median(self.step_seconds) if self.step_seconds else 0.0
        host = ""
        if snapshot.host_tier:
            host_rate = 100.0 * self.host_hits / self.host_queries if self.host_queries else 0.0
            host = (
                f"CPU KV cache usage: {100.0 * snapshot.cpu_cache_usage:.1f}%, "
                f"CPU prefix cache hit rate: {host_rate:.1f}%, "
            )
        logger.info(
            "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
            "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, "
            "Prefix cache hit rate: %.1f%%, %sMedian step: %.2f ms",
            self.prompt_tokens / elapsed,
            self.generation_tokens / elapsed,
            snapshot.num_running,
            snapshot.num_waiting,
            100.0 * snapshot.kv_cache_usage,
            hit_rate,
            host,
            step_ms,
        )
        self._reset(now)
