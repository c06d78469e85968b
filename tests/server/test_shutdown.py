"""SIGTERM drains: /health turns 503, new requests get 503, a running stream ends cleanly
(finish_reason "abort", then [DONE]) once --shutdown-timeout passes, and the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from tests.server.conftest import API_KEY, MODEL, start_server, tiny_server_args

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def test_sigterm_drains_then_exits_zero(tmp_path):
    # The bundled model: its stream of a thousand tokens outlasts the one-second drain on any
    # CPU (the tiny model could finish first).
    args = ["-m", "pagedllm.entrypoints.cli.main", "serve", MODEL, "--api-key", API_KEY,
            "--kv-cache-memory-bytes", "128M", "--max-model-len", "2048",
            "--shutdown-timeout", "1"]  # fmt: skip
    server = start_server(args, tmp_path / "server.log")
    lines: list[str] = []

    def stream() -> None:
        body = {"prompt": "go", "max_tokens": 1000, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=HEADERS,
                          timeout=60) as response:  # fmt: skip
            lines.extend(line for line in response.iter_lines() if line)

    thread = threading.Thread(target=stream)
    thread.start()
    while not lines and thread.is_alive():
        time.sleep(0.05)
    try:
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/health").status_code == 503
        refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "a"}, headers=HEADERS)
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
        thread.join(timeout=30)
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == "abort"
        assert server.process.wait(timeout=30) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "Draining" in server.logs()


def test_ctrl_c_in_a_terminal_stops_everything_without_a_traceback(tiny_chat_model, tmp_path):
    """Ctrl-C signals the whole foreground process group. The server shuts down and exits
    0; its children (the engine core, the template workers, in sessions of their own) end
    with it instead of dying of the interrupt with a KeyboardInterrupt traceback of their
    own, even one still importing. The tiny model:
    nothing is generated, the signal meets both processes idle (it starts ~8 s sooner)."""
    args = tiny_server_args(tiny_chat_model)
    server = start_server(args, tmp_path / "server.log", new_session=True)
    os.killpg(server.process.pid, signal.SIGINT)
    assert server.process.wait(timeout=60) == 0
    logs = server.logs()
    assert "Traceback" not in logs and "KeyboardInterrupt" not in logs, logs[-3000:]
