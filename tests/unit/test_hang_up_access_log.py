"""A client that hangs up on a request still leaves an access line (status 499): uvicorn
writes none for a response it cannot send."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from uvicorn.logging import AccessFormatter

from pagedllm.entrypoints.openai.middleware import unless_disconnected


def hung_up_request() -> Request:
    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/completions",
        "query_string": b"a=1", "headers": [], "client": ("10.0.0.7", 5123),
    }  # fmt: skip

    async def receive() -> dict:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    return Request(scope, receive)


def test_a_hang_up_cancels_the_work_and_writes_a_499_access_line(caplog) -> None:
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "done"

    async def run() -> str | None:
        return await unless_disconnected(hung_up_request(), work())

    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        assert asyncio.run(run()) is None
    assert cancelled.is_set()
    [record] = [r for r in caplog.records if r.name == "uvicorn.access"]
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line.strip() == '10.0.0.7:5123 - "POST /v1/completions?a=1 HTTP/1.1" 499'


def test_work_that_ends_first_writes_no_line_here(caplog) -> None:
    """uvicorn writes the line of a response it sends."""

    async def work() -> str:
        return "done"

    async def run() -> str | None:
        return await unless_disconnected(hung_up_request(), work())

    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        assert asyncio.run(run()) == "done"
    assert not [r for r in caplog.records if r.name == "uvicorn.access"]
