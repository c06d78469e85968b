"""A real uvicorn server on loopback in a thread, for tests of the server's HTTP protocol
(``http_protocol.protocol_class``) with a tiny ASGI app."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


async def lifespan(receive: Any, send: Any) -> None:
    """Answer the lifespan protocol (an app's ``scope["type"] == "lifespan"``)."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


@contextlib.contextmanager
def running(app: Any, http: type) -> Iterator[int]:
    """``app`` served with the protocol class ``http``; yields the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=http)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
