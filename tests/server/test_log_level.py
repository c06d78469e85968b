"""--log-level in any case reaches pagedllm's own loggers (the engine core's included, which
logs the scheduler's decisions once a step at DEBUG), and ``python -m
pagedllm.entrypoints.openai.api_server`` says where it serves, as ``pagedllm serve`` does."""

from __future__ import annotations

import re
from pathlib import Path

from tests.server.conftest import MODEL, Server


def test_debug_in_capitals_logs_steps_and_the_module_entry_point_says_where(
    module_entry_server: Server, tiny_chat_model: Path
):
    """The server runs with ``--log-level DEBUG`` (module_entry_server)."""
    with module_entry_server.client() as client:
        body = {"model": str(tiny_chat_model), "prompt": "ab", "max_tokens": 3}
        assert client.post("/v1/completions", json=body).status_code == 200
    logs = module_entry_server.logs()
    assert re.search(r"Serving .* at http://127\.0\.0\.1:\d+/v1", logs), logs[-3000:]
    assert re.search(r"DEBUG .*\[core\.py:\d+\] Step: 1 requests \(1 new\)", logs), logs[-3000:]


def test_default_level_keeps_steps_quiet(server: Server):
    """The suite's shared server runs at the default level: no per-step lines."""
    with server.client() as client:
        body = {"model": MODEL, "prompt": "ab", "max_tokens": 3}
        assert client.post("/v1/completions", json=body).status_code == 200
    logs = server.logs()
    assert "Serving " in logs and "Step: " not in logs and "DEBUG " not in logs


def test_the_environment_sets_the_level_unless_the_flag_does(monkeypatch):
    """Without --log-level, PAGEDLLM_LOGGING_LEVEL decides (the flag's default must not
    override it): vLLM users set VLLM_LOGGING_LEVEL the same way."""
    from pagedllm.entrypoints.openai.api_server import server_log_level

    monkeypatch.setenv("PAGEDLLM_LOGGING_LEVEL", "DEBUG")
    assert server_log_level(None) == "debug"
    assert server_log_level("warning") == "warning"
    monkeypatch.delenv("PAGEDLLM_LOGGING_LEVEL")
    assert server_log_level(None) == "info"
