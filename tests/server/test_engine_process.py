"""The engine core in its own process, seen from the server: every generated token reaches
each stream as its own event; a dead engine turns /health 503 and errors its waiting
clients within seconds (no hang); an engine never outlives its server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import SEPARATE
from tests.server.conftest import (
    API_KEY,
    MODEL,
    Server,
    start_server,
    stop_server,
    tiny_server_args,
)

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# These tests are about the engine's own process, whatever the suite runs with (SEPARATE);
# the shared tiny_server runs its core in its own process too.


def engine_pid(server_pid: int) -> int:
    """The engine core process among the server's children."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    for pid in map(int, children):
        if "pagedllm.engine.core_proc" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    raise AssertionError(f"no engine core process under {server_pid}: {children}")


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            status = Path(f"/proc/{pid}/status").read_text()
            if "State:\tZ" in status:  # exited, not yet reaped
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.1)
    return False


def test_each_token_is_its_own_event_for_64_streams(tiny_server: Server):
    """Sixty-four streams at once: each gets one SSE event per generated token (the last
    also carries the finish reason), never tokens clumped into one event."""
    tokens = 24

    async def stream(http: httpx.AsyncClient, i: int) -> tuple[int, int]:
        body = {"prompt": f"stream {i}", "max_tokens": tokens, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        events = 0
        usage = None
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                events += bool(chunk["choices"])
                usage = chunk.get("usage") or usage
        return events, usage["completion_tokens"]

    async def all_streams() -> list[tuple[int, int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=tiny_server.url, headers=HEADERS, timeout=120,
                                     limits=limits) as http:  # fmt: skip
            return list(await asyncio.gather(*(stream(http, i) for i in range(64))))

    results = asyncio.run(all_streams())
    assert all(completion == tokens for _, completion in results)
    assert [events for events, _ in results] == [tokens] * 64


def test_a_dead_engine_is_reported_not_waited_for(tmp_path):
    # The bundled model: a thousand tokens outlast the kill on any CPU.
    args = ["-m", "pagedllm.entrypoints.cli.main", "serve", MODEL, "--api-key", API_KEY,
            "--kv-cache-memory-bytes", "128M", "--max-model-len", "2048"]  # fmt: skip
    server = start_server(args, tmp_path / "server.log", env=SEPARATE)
    try:
        outcome: dict = {}

        def waiting_client() -> None:
            body = {"prompt": "go", "max_tokens": 1000, "ignore_eos": True}
            start = time.monotonic()
            reply = httpx.post(f"{server.url}/v1/completions", json=body, headers=HEADERS,
                               timeout=60)  # fmt: skip
            outcome["reply"], outcome["seconds"] = reply, time.monotonic() - start

        thread = threading.Thread(target=waiting_client)
        thread.start()
        time.sleep(2.0)
        killed_at = time.monotonic()
        os.kill(engine_pid(server.process.pid), signal.SIGKILL)
        thread.join(timeout=30)
        assert outcome["reply"].status_code == 503
        assert "not running" in outcome["reply"].json()["error"]["message"]
        assert time.monotonic() - killed_at < 10
        assert httpx.get(f"{server.url}/health").status_code == 503
    finally:
        stop_server(server)


def test_the_engine_does_not_outlive_its_server(tiny_chat_model, tmp_path):
    server = start_server(tiny_server_args(tiny_chat_model), tmp_path / "server.log", env=SEPARATE)
    engine = engine_pid(server.process.pid)
    # A process that ends with its engine keeps the built engine out of the collector's passes.
    assert "objects are kept out of the garbage collector's passes" in server.logs()
    server.process.send_signal(signal.SIGKILL)  # no chance to clean up
    server.process.wait(timeout=10)
    assert gone_within(engine, 15), "the engine core outlived its killed server"


def metric(exposition: str, name: str, label: str = "") -> float:
    """The value of the sample ``name`` (with ``label`` among its labels) in a /metrics text."""
    for line in exposition.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {label} not in /metrics")


def test_two_api_servers_share_one_engine(tiny_chat_model, tmp_path):
    args = tiny_server_args(tiny_chat_model, "--api-server-count", "2")
    server = start_server(args, tmp_path / "server.log", env=SEPARATE, new_session=True)
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        commands = [
            Path(f"/proc/{pid}/cmdline").read_text() for pid in children.read_text().split()
        ]
        assert sum("server_processes" in c for c in commands) == 2
        assert sum("engine.core_proc" in c for c in commands) == 1
        engine_argv = next(c for c in commands if "engine.core_proc" in c).split("\0")
        input_address = engine_argv[engine_argv.index("pagedllm.engine.core_proc") + 1]
        sockets = Path(input_address.removeprefix("ipc://"))
        assert sockets.parent.exists()
        bodies = [{"prompt": f"p{i}", "max_tokens": 4, "ignore_eos": True} for i in range(16)]

        async def send_all() -> list[httpx.Response]:
            # A new connection per request: the kernel spreads them over both servers.
            async def one(body: dict) -> httpx.Response:
                async with httpx.AsyncClient(base_url=server.url, headers=HEADERS,
                                             timeout=60) as http:  # fmt: skip
                    return await http.post("/v1/completions", json=body)

            return list(await asyncio.gather(*(one(b) for b in bodies)))

        replies = asyncio.run(send_all())
        assert [r.status_code for r in replies] == [200] * 16
        assert all(r.json()["usage"]["completion_tokens"] == 4 for r in replies)
        # Whichever server answers /metrics reports both: each served some of the 16
        # requests, and the engine-wide counts are recorded once.
        for _ in range(6):  # new connections: both servers answer some of these
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            assert metric(text, "pagedllm:request_success_total", 'finished_reason="length"') == 16
            assert metric(text, "pagedllm:generation_tokens_total") == 64
            assert metric(text, "pagedllm:e2e_request_latency_seconds_count") == 16
        # A terminal's Ctrl-C: the supervisor forwards it, each server gets it once.
        os.killpg(server.process.pid, signal.SIGINT)
        assert server.process.wait(timeout=60) == 0
        assert not sockets.parent.exists()  # the engine's socket directory went with it
    finally:
        if server.process.poll() is None:
            server.process.kill()
    logs = server.logs()
    assert "Started 2 API server processes" in logs
    assert logs.count("Shutting down: ending 0 request(s)") == 2, logs[-3000:]
    assert "A second signal" not in logs and "Traceback" not in logs, logs[-3000:]


def test_api_servers_get_the_dtype_the_engine_runs(tiny_chat_model, monkeypatch):
    """With --api-server-count, each server rebuilds its config from the arguments; they
    carry the dtype the supervisor resolved (on the CPU auto is decided by timing, which a
    server must not redo and decide otherwise)."""
    from pagedllm.entrypoints.cli.engine_flags import engine_args_from
    from pagedllm.entrypoints.cli.main import build_parser
    from pagedllm.entrypoints.openai.server_processes import server_args

    monkeypatch.setenv("PAGEDLLM_CPU_DTYPE", "bfloat16")  # what auto resolves to here
    args = build_parser().parse_args(["serve", str(tiny_chat_model), "--api-server-count", "2"])
    config = engine_args_from(args).create_engine_config()
    assert args.dtype is None and config.model_config.dtype == "bfloat16"  # auto
    monkeypatch.setenv("PAGEDLLM_CPU_DTYPE", "float32")  # a server deciding alone would differ
    child = server_args(args, config)
    assert child.dtype == "bfloat16" and child.api_server_count == 2 and args.dtype is None
    assert engine_args_from(child).create_engine_config().model_config.dtype == "bfloat16"
