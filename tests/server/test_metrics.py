"""/metrics has vLLM 0.26's metrics of a text-generation model (prefix ``pagedllm:``, labels
``model_name`` and ``engine``), the HTTP and process metrics, on the API port and on
``--metrics-port``; the Grafana dashboard's queries all find their metric; ``LLM.get_metrics()``
has the same engine metrics offline."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import (
    API_KEY,
    Server,
    free_port,
    start_server,
    stop_server,
    tiny_server_args,
)

DASHBOARD = Path(__file__).parents[2] / "examples/online_serving/prometheus_grafana/grafana.json"

# Every metric vLLM 0.26 serves for a text-generation model without LoRA, speculative
# decoding, KV connectors or multimodal inputs (its loggers.py), with its type.
VLLM_METRICS = {
    "num_requests_running": "gauge", "num_requests_waiting": "gauge",
    "num_requests_waiting_by_reason": "gauge", "engine_sleep_state": "gauge",
    "kv_cache_usage_perc": "gauge", "prefix_cache_queries": "counter",
    "prefix_cache_hits": "counter", "num_preemptions": "counter", "prompt_tokens": "counter",
    "prompt_tokens_by_source": "counter", "prompt_tokens_cached": "counter",
    "generation_tokens": "counter", "request_success": "counter",
    "request_prompt_tokens": "histogram", "request_generation_tokens": "histogram",
    "iteration_tokens_total": "histogram", "request_max_num_generation_tokens": "histogram",
    "request_params_n": "histogram", "request_params_max_tokens": "histogram",
    "time_to_first_token_seconds": "histogram", "inter_token_latency_seconds": "histogram",
    "request_time_per_output_token_seconds": "histogram",
    "e2e_request_latency_seconds": "histogram", "request_queue_time_seconds": "histogram",
    "request_inference_time_seconds": "histogram", "request_prefill_time_seconds": "histogram",
    "request_decode_time_seconds": "histogram", "request_prefill_kv_computed_tokens": "histogram",
    "cache_config_info": "gauge",
}  # fmt: skip
PHASES = ("queue", "prefill", "decode", "inference")


@pytest.fixture(scope="module")
def served(tiny_chat_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    log = tmp_path_factory.mktemp("metrics") / "server.log"
    metrics_port = free_port()
    args = tiny_server_args(tiny_chat_model, "--metrics-port", str(metrics_port),
                            "--max-model-len", "512")  # fmt: skip
    server = start_server(args, log)
    try:
        with server.client() as client:
            prompt = {"model": str(tiny_chat_model), "prompt": "hello there " * 4, "max_tokens": 8,
                      "ignore_eos": True}  # fmt: skip
            assert client.post("/v1/completions", json={**prompt, "n": 2}).status_code == 200
            assert client.post("/v1/completions", json=prompt).status_code == 200
        yield server, metrics_port
    finally:
        stop_server(server)


def scrape(server: Server) -> str:
    with server.client() as client:
        return client.get("/metrics").text


def value(text: str, sample: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(sample)}\{{([^}}]*)\}} (\S+)$"
    found = [float(m[2]) for m in re.finditer(pattern, text, re.M) if labels in m[1]]
    assert found, f"{sample}{{{labels}}} not in /metrics"
    return sum(found)


def test_every_vllm_metric_with_its_labels(served: tuple) -> None:
    text = scrape(served[0])
    for name, kind in VLLM_METRICS.items():
        assert re.search(rf"^# TYPE pagedllm:{name}(_total)? {kind}$", text, re.M), name
        sample = f"pagedllm:{name}" + {"counter": "_total", "histogram": "_count"}.get(kind, "")
        value(text, sample, 'engine="0"')
    # Two requests (one with n=2) finished, each measured in every phase.
    for phase in PHASES:
        assert value(text, f"pagedllm:request_{phase}_time_seconds_count") == 2
    assert value(text, "pagedllm:request_params_n_bucket", 'le="1.0"') == 1
    assert value(text, "pagedllm:request_params_n_bucket", 'le="2.0"') == 2
    assert value(text, "pagedllm:request_max_num_generation_tokens_sum") == 16
    assert value(text, "pagedllm:request_params_max_tokens_sum") == 16
    # Token-count buckets go up to max_model_len (512) in 1-2-5 steps, as vLLM's.
    assert 'pagedllm:request_prompt_tokens_bucket{engine="0",le="500.0"' in text
    assert 'le="1000.0"' not in text
    assert value(text, "pagedllm:num_requests_waiting_by_reason", 'reason="deferred"') == 0
    assert value(text, "pagedllm:engine_sleep_state", 'sleep_state="awake"') == 1
    assert value(text, "pagedllm:cache_config_info", 'enable_prefix_caching="True"') == 1
    # The last request found the prompt of the first in the prefix cache.
    assert value(text, "pagedllm:prompt_tokens_cached_total") > 0
    assert value(text, "pagedllm:prompt_tokens_by_source_total", 'source="local_cache_hit"') > 0
    # HTTP (prometheus-fastapi-instrumentator) and process metrics.
    assert value(text, "http_requests_total", 'handler="/v1/completions"') == 2
    assert "http_request_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text


def test_metrics_port_serves_the_same_metrics(served: tuple) -> None:
    port = served[1]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text  # no key needed
    assert value(text, "pagedllm:e2e_request_latency_seconds_count") == 2
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 404


def test_every_dashboard_metric_is_served(served: tuple) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(dashboard["panels"]) == 12
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {m for expr in exprs for m in re.findall(r"pagedllm:[a-z0-9_]+", expr)}
    assert len(queried) > 15
    text = scrape(served[0])
    served_samples = set(re.findall(r"^(pagedllm:[a-z0-9_]+)[{ ]", text, re.M))
    assert queried <= served_samples, queried - served_samples
    # Each panel has data: every queried counter and histogram has counted something (the
    # gauges are 0 on an idle server).
    cumulative = [m for m in queried if m.endswith(("_total", "_sum", "_bucket", "_count"))]
    assert len(cumulative) > 10
    assert [m for m in cumulative if value(text, m) == 0] == []


def test_metrics_port_flag_checked(
    tiny_chat_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Refused before the model loads: through the command's main() in this process (a
    process paid ~3 s of imports), which must not reach the socket."""
    from pagedllm.entrypoints.cli.main import main
    from pagedllm.entrypoints.openai import api_server

    def no_bind(host: str | None, port: int) -> None:
        raise AssertionError("--metrics-port equal to --port passed the start-up checks")

    monkeypatch.setattr(api_server, "_bind", no_bind)
    monkeypatch.delenv("PAGEDLLM_LOGGING_LEVEL", raising=False)  # main() sets it for its server
    args = tiny_server_args(tiny_chat_model)[2:]  # less "-m pagedllm.entrypoints.cli.main"
    assert main([*args, "--port", "8123", "--metrics-port", "8123"]) == 2
    assert "--metrics-port must differ from --port" in capsys.readouterr().err


def test_offline_get_metrics(tiny_chat_model: Path) -> None:
    from pagedllm import LLM, SamplingParams

    llm = LLM(str(tiny_chat_model), disable_log_stats=False, kv_cache_memory_bytes="16M")
    llm.generate(["hello there " * 4], SamplingParams(max_tokens=4, ignore_eos=True, n=2))
    metrics = {(m.name, m.labels.get("finished_reason")): m for m in llm.get_metrics()}
    names = {name for name, _ in metrics}
    assert {f"pagedllm:{n}" for n in VLLM_METRICS} <= names
    assert all(m.labels["engine"] == "0" for m in metrics.values())
    assert metrics["pagedllm:request_prefill_time_seconds", None].count == 1
    assert metrics["pagedllm:request_params_n", None].sum == 2
    assert metrics["pagedllm:prompt_tokens_cached", None].value > 0
    assert API_KEY  # the servers above use it; offline needs none
