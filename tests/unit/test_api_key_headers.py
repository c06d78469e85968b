"""Both credential headers at once: each one sent must hold a key. A right ``x-api-key``
let a wrong ``Authorization: Bearer`` through (and the swap), so a proxy in front that
checks one header and the server that checked the other disagreed."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from pagedllm.entrypoints.openai.middleware import ApiKeyMiddleware

KEYS = ["key-a", "key-b"]


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {}

    app.add_middleware(ApiKeyMiddleware, api_keys=KEYS)
    return app


async def _status(headers: dict[str, str]) -> int:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return (await http.get("/v1/models", headers=headers)).status_code


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong", "x-api-key": "key-a"},
        {"Authorization": "Bearer key-a", "x-api-key": "wrong"},
        {"Authorization": "Bearer ", "x-api-key": "key-a"},  # an empty token is no key
        {"Authorization": "Bearer key-a", "x-api-key": ""},
        {"Authorization": "Basic key-a", "x-api-key": "key-a"},  # no Bearer token: no key
    ],
)
async def test_one_wrong_header_of_two_is_refused(headers):
    assert await _status(headers) == 401


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer key-a", "x-api-key": "key-a"},
        {"Authorization": "Bearer key-a", "x-api-key": "key-b"},  # any of the keys, each
        {"Authorization": "bearer key-b"},
        {"x-api-key": "key-a"},
    ],
)
async def test_every_header_sent_holding_a_key_is_accepted(headers):
    assert await _status(headers) == 200


@pytest.mark.anyio
async def test_the_refusal_says_each_header_sent_must_hold_a_key():
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        headers = {"Authorization": "Bearer wrong", "x-api-key": "key-a"}
        reply = await http.get("/v1/models", headers=headers)
    assert reply.status_code == 401
    assert "each of them sent must hold a valid key" in reply.json()["error"]["message"]
