"""The server's HTTP protocol against a real uvicorn server on loopback: a client that stops
reading loses its connection after ``send_timeout_s`` and the app's send returns; a client
that reads slowly but steadily keeps it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pagedllm.entrypoints.openai.http_protocol import protocol_class
from tests.unit.uvicorn_server import lifespan, running

CHUNK = b"x" * (1 << 20)
CHUNKS = 24  # far past what the socket buffers and the transport's high-water mark hold
SEND_TIMEOUT_S = 0.5


class _BigResponseApp:
    """Streams CHUNKS megabytes, then records how the response ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.done = threading.Event()

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)
        for _ in range(CHUNKS):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        # A disconnected client's cycle answers at once; a complete one waits: poll briefly.
        try:
            message = await asyncio.wait_for(receive(), 1.0)
            self.ended.append(message["type"])
        except asyncio.TimeoutError:
            self.ended.append("still connected")
        self.done.set()


@pytest.fixture
def served() -> Iterator[tuple[_BigResponseApp, int]]:
    app = _BigResponseApp()
    http = protocol_class(header_timeout_s=5.0, send_timeout_s=SEND_TIMEOUT_S)
    with running(app, http) as port:
        yield app, port


def _request(port: int, small_buffer: bool) -> socket.socket:
    sock = socket.socket()
    if small_buffer:  # set before connecting; the server's buffers fill the sooner
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    return sock


def test_a_client_that_reads_nothing_loses_the_connection(served):
    app, port = served
    with _request(port, small_buffer=True) as sock:
        started = time.monotonic()
        assert app.done.wait(15), "the response's send still waits on a client that never reads"
        waited = time.monotonic() - started
        assert app.ended == ["http.disconnect"]
        assert SEND_TIMEOUT_S <= waited < 10
        # The connection is gone: reading drains what the kernel held, then ends or resets
        # (a read that waits instead times out, and fails the test).
        sock.settimeout(5)
        try:
            while sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass  # the abort's reset


def test_a_slow_but_steady_reader_keeps_the_connection(served):
    app, port = served
    received, pauses = 0, 0
    with _request(port, small_buffer=False) as sock:
        sock.settimeout(5)
        while received < CHUNKS * len(CHUNK):
            data = sock.recv(1 << 20)
            assert data, "the server closed a connection whose client was reading"
            received += len(data)
            if received > (pauses + 1) * (4 << 20):  # stop reading for a while, every 4 MiB
                pauses += 1
                time.sleep(SEND_TIMEOUT_S * 0.6)
        assert app.done.wait(5)
    assert pauses >= 5
