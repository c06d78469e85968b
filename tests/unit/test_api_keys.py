"""API keys as vLLM takes them: several after --api-key, or VLLM_API_KEY; each accepted as
a Bearer token or in x-api-key."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from pagedllm import envs
from pagedllm.entrypoints.openai.api_server import make_parser
from pagedllm.entrypoints.openai.middleware import ApiKeyMiddleware


@pytest.mark.anyio
async def test_any_of_several_keys_opens_the_api():
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {}

    app.add_middleware(ApiKeyMiddleware, api_keys=["key-a", "key-b"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for headers in ({"Authorization": "Bearer key-a"}, {"Authorization": "bearer key-b"},
                        {"x-api-key": "key-b"}):  # fmt: skip
            assert (await http.get("/v1/models", headers=headers)).status_code == 200, headers
        for headers in ({}, {"Authorization": "Bearer key-c"}, {"x-api-key": "key-"},
                        {"Authorization": "Basic key-a"}):  # fmt: skip
            assert (await http.get("/v1/models", headers=headers)).status_code == 401, headers


def test_keys_from_the_command_line_or_the_environment(monkeypatch):
    assert make_parser().parse_args(["--api-key", "a", "b"]).api_key == ["a", "b"]
    assert make_parser().parse_args(["--api_key", "a"]).api_key == ["a"]
    monkeypatch.delenv("PAGEDLLM_API_KEY", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "from-helm")
    assert envs.api_key() == "from-helm"
    monkeypatch.setenv("PAGEDLLM_API_KEY", "ours")
    assert envs.api_key() == "ours"


@pytest.mark.anyio
async def test_a_credential_header_sent_twice_is_refused():
    """The server read the last of two Authorization headers (``Bearer wrong`` then
    ``Bearer right`` was a 200), a proxy in front may check the first: two of either
    credential header are a 401 naming it, whatever their values; one of each still works."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {}

    app.add_middleware(ApiKeyMiddleware, api_keys=["right"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for name, wrong, right in (("Authorization", "Bearer wrong", "Bearer right"),
                                   ("x-api-key", "wrong", "right")):  # fmt: skip
            for values in ((wrong, right), (right, wrong), (right, right)):
                headers = [(name, value) for value in values]
                reply = await http.get("/v1/models", headers=headers)
                assert reply.status_code == 401, (headers, reply.text)
                assert f"more than one '{name.lower()}' header" in reply.json()["error"]["message"]
        upper = [("Authorization", "Bearer right"), ("AUTHORIZATION", "Bearer right")]
        assert (await http.get("/v1/models", headers=upper)).status_code == 401
        both = {"Authorization": "Bearer right", "x-api-key": "right"}
        assert (await http.get("/v1/models", headers=both)).status_code == 200
        assert (await http.get("/v1/models", headers=[("x-api-key", "right")])).status_code == 200
