"""Routes that act on every client's state are served only in development mode
(PAGEDLLM_SERVER_DEV_MODE, or vLLM's VLLM_SERVER_DEV_MODE), as vLLM serves them: otherwise
any client could empty the prefix cache that every other client's requests reuse."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pagedllm.config import EngineArgs
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.entrypoints.openai.api_server import build_app, make_parser
from pagedllm.metrics.prometheus import PrometheusStatLogger


@pytest.fixture(scope="module")
def engine(tiny_chat_model):
    config = EngineArgs(
        model=str(tiny_chat_model), kv_cache_memory_bytes="16M"
    ).create_engine_config()
    engine = AsyncLLM(config, log_stats=False)
    yield engine
    engine.shutdown()


def app_for(engine: AsyncLLM):
    config = engine.engine.config
    stats = PrometheusStatLogger("tiny", config.model_config.max_model_len, config.cache_config)
    return build_app(engine, make_parser().parse_args([]), stats)


async def reset(app) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.post("/reset_prefix_cache")


def test_no_reset_route_by_default(engine, monkeypatch):
    monkeypatch.delenv("PAGEDLLM_SERVER_DEV_MODE", raising=False)
    monkeypatch.delenv("VLLM_SERVER_DEV_MODE", raising=False)
    assert asyncio.run(reset(app_for(engine))).status_code == 404


@pytest.mark.parametrize("variable", ["PAGEDLLM_SERVER_DEV_MODE", "VLLM_SERVER_DEV_MODE"])
def test_development_mode_serves_the_reset(engine, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    reply = asyncio.run(reset(app_for(engine)))
    assert reply.status_code == 200 and reply.json() == {"reset": True}
