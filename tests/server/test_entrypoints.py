"""The two ways to start the server, and start-up failures that must be clear."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import Server


def test_python_dash_m_api_server(module_entry_server: Server, tiny_chat_model: Path) -> None:
    """``python -m pagedllm.entrypoints.openai.api_server --model ... --disable-log-requests``
    (module_entry_server, which also logs at DEBUG: the prompt stays out of the log even
    there)."""
    server, model = module_entry_server, str(tiny_chat_model)
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["data"][0]["id"] == model  # no key set: open
    reply = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": model, "prompt": "Hi, a private prompt", "max_tokens": 2},
        timeout=60,
    )
    assert reply.status_code == 200
    logs = server.logs()
    assert "Application startup complete." in logs and "Received request" not in logs
    assert "private prompt" not in logs


def serve(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "serve", *flags],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


UNBUILT_FLAGS = [
    (["--quantization", "awq"], "quantization='awq' is not supported; pagedllm supports fp8"),
    (["--swap-space", "-1"], "swap_space must be >= 0 GiB"),
    (["--tensor_parallel_size", "2"], "tensor_parallel_size"),
    (["--kv-cache-dtype", "int8_per_token_head"], "kv_cache_dtype"),
    (["--enable-reasoning"], "--reasoning-parser"),
    (["--enable-log-outputs"], "--enable-log-outputs needs --enable-log-requests"),
    (["--enable-log-requests", "--disable-log-requests"], "contradict each other"),
    (["--max-log-len", "-1"], "--max-log-len must be at least 0"),
]


def test_unbuilt_flags_fail_at_start_naming_them():
    """The command as a user types it: exit status 2 and the flag named on stderr."""
    flags, name = UNBUILT_FLAGS[0]
    done = serve(*flags, "--port", "0")
    assert done.returncode == 2, (flags, done.stderr[-500:])
    assert name in done.stderr


@pytest.mark.parametrize(("flags", "name"), UNBUILT_FLAGS)
def test_each_unbuilt_flag_fails_at_start_naming_it(flags, name, monkeypatch, capsys):
    """Every refused flag through the command's own main() in this process (a process per
    flag paid ~4 s of imports each). A flag let through would reach the socket: refused
    here, so such a regression fails instead of serving."""
    from pagedllm.entrypoints.cli.main import main
    from pagedllm.entrypoints.openai import api_server

    def no_bind(host: str | None, port: int) -> None:
        raise AssertionError(f"{flags} passed the start-up checks")

    monkeypatch.setattr(api_server, "_bind", no_bind)
    monkeypatch.delenv("PAGEDLLM_LOGGING_LEVEL", raising=False)  # main() sets it for its server
    assert main(["serve", *flags, "--port", "0"]) == 2
    assert name in capsys.readouterr().err


def test_busy_port_fails_before_loading_the_model():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve("--host", "127.0.0.1", "--port", str(port))
    assert done.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Loaded" not in done.stdout
