"""Real servers on 127.0.0.1 (free ports): the bundled model's and the tiny model's, each
started once per session (by ``shared_servers``, tests/conftest.py) for the tests that only
send it requests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Aliases the users' scripts call the model by (../shared/seeds/000 and 001).
ALIASES = [
    MODEL,
    "qwen2.5-7b",
    "qwen2.5-7b-131072",
    "deepseek-r1:7b",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    args: list[str],
    log: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> Server:
    """``env``: variables set for this server on top of the test's own; ``new_session``: the
    server leads a process group of its own (as a command started from a terminal)."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PAGEDLLM_LOG_STATS_INTERVAL": "1", **(env or {})}
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=new_session,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.logs()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"server did not start:\n{server.logs()[-4000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(shared_servers: Callable[..., Server]) -> Server:
    args = [
        "-m", "pagedllm.entrypoints.cli.main", "serve", MODEL,
        "--served-model-name", *ALIASES,
        "--api_key", API_KEY,
        "--max_model_len", "2048",
        "--kv-cache-memory-bytes", "256M",
        "--reasoning-parser", "deepseek_r1", "--enable-reasoning",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--enable-log-requests", "--enable-log-outputs", "--max-log-len", "60",
        "--enable-request-id-headers", "--disable-access-log-for-endpoints", "/health,/ping",
        "--enable-prompt-tokens-details",
    ]  # fmt: skip
    return shared_servers(args)


@pytest.fixture(scope="session")
def openai_client(server: Server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def tiny_server_args(model: Path, *flags: str) -> list[str]:
    return [
        "-m", "pagedllm.entrypoints.cli.main", "serve", str(model),
        "--api-key", API_KEY, "--kv-cache-memory-bytes", "16M", *flags,
    ]  # fmt: skip


# A second tenant's key, for the ``two_keys`` server.
OTHER_KEY = "other-tenant-key"


@pytest.fixture(scope="session")
def two_keys(tiny_chat_model: Path, shared_servers: Callable[..., Server]) -> Server:
    """A server on the tiny model shared by two tenants: keys API_KEY and OTHER_KEY.
    ``--api-key`` takes its keys after one flag (nargs="+", as vLLM's): this one replaces the
    single key ``tiny_server_args`` gives."""
    return shared_servers(tiny_server_args(tiny_chat_model, "--api-key", API_KEY, OTHER_KEY))


@pytest.fixture
def two_keys_http(two_keys: Server) -> Iterator[httpx.Client]:
    """A client of the ``two_keys`` server that sends no key of its own."""
    with httpx.Client(base_url=two_keys.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def limited(tiny_chat_model: Path, shared_servers: Callable[..., Server]) -> Server:
    """A server on the tiny model with small limits, that runs request chat templates, serves
    no API docs and no chat page, answers as "bot", gives every template two variables and
    every stream its usage, and writes logprob tokens as token ids."""
    args = tiny_server_args(
        tiny_chat_model,
        "--max-request-body-bytes", "100000",
        "--request-header-timeout", "1.5",
        "--request-body-timeout", "1.5",
        "--max-waiting-requests", "6",
        "--max-num-seqs", "2",
        "--max-n", "4",
        "--trust-request-chat-template",
        "--chat-template-render-timeout", "2",
        "--disable-fastapi-docs",
        "--disable-web-ui",
        "--response-role", "bot",
        "--default-chat-template-kwargs", '{"greeting": "hi", "mood": "calm"}',
        "--enable-force-include-usage",
        "--return-tokens-as-token-ids",
    )  # fmt: skip
    return shared_servers(args)


@pytest.fixture(scope="session")
def module_entry_server(tiny_chat_model: Path, shared_servers: Callable[..., Server]) -> Server:
    """``python -m pagedllm.entrypoints.openai.api_server`` on the tiny model: no API key, the
    log at DEBUG in capitals, requests not logged (their prompts must stay out of the log even
    at DEBUG)."""
    args = [
        "-m", "pagedllm.entrypoints.openai.api_server", "--model", str(tiny_chat_model),
        "--kv-cache-memory-bytes", "16M", "--log-level", "DEBUG", "--disable-log-requests",
    ]  # fmt: skip
    return shared_servers(args)
