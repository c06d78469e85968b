"""An error nothing handled: one log record with a reference, a 500 that names the
reference and not the error's text (which may hold server internals)."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from pagedllm.entrypoints.openai.middleware import ErrorMiddleware


@pytest.mark.anyio
async def test_one_log_record_and_no_internals(caplog):
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("/secret/path/of/the/server")

    app.add_middleware(ErrorMiddleware)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            reply = await http.get("/boom")
    assert reply.status_code == 500
    message = reply.json()["error"]["message"]
    assert "secret" not in message and "reference" in message
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1 and records[0].exc_info is not None
    assert message.split("reference ")[1][:12] in records[0].getMessage()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_client_gone_mid_response_is_no_error(caplog):
    """The server's send raises when the connection is closed (a client that pipelined and
    never read): a line at INFO, no traceback at ERROR, nothing sent after."""

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    sent: list[dict] = []

    async def closed_send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    scope = {"type": "http", "path": "/metrics", "method": "GET", "headers": []}
    with caplog.at_level(logging.INFO):
        await ErrorMiddleware(app)(scope, None, closed_send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("went away mid-response" in r.getMessage() for r in caplog.records)
