"""The server's bound on open connections against a real uvicorn server on loopback: at the
bound, a new connection closes the one that has waited longest for its request's headers
(and its request is served), or is itself closed where every connection is busy with a
request; and ``--max-connections`` is checked."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pagedllm.entrypoints.openai.http_protocol import protocol_class
from pagedllm.entrypoints.openai.limits import ServerLimits
from tests.unit.uvicorn_server import lifespan, running

MAX_CONNECTIONS = 8
REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


class _App:
    """Answers 200 at once, or, while ``hold`` is set, once ``release`` is set."""

    def __init__(self) -> None:
        self.hold = False
        self.release = threading.Event()
        self.running = 0

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.running += 1
        while self.hold and not self.release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def served() -> Iterator[tuple[_App, int]]:
    app = _App()
    http = protocol_class(header_timeout_s=30.0, send_timeout_s=30.0,
                          max_connections=MAX_CONNECTIONS)  # fmt: skip
    with running(app, http) as port:
        yield app, port
        app.release.set()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection: reading gives EOF or a reset (a read that
    waits instead times out: not closed)."""
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _response(sock: socket.socket) -> bytes:
    data = b""
    while b"ok" not in data:
        chunk = sock.recv(1 << 16)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    return data


def _wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_new_connection_closes_the_one_idle_longest(served):
    _, port = served
    idle = []
    for _ in range(MAX_CONNECTIONS):
        idle.append(_connect(port))
        time.sleep(0.05)  # accepted in this order
    try:
        with _connect(port) as sock:
            sock.sendall(REQUEST)
            assert _response(sock).startswith(b"HTTP/1.1 200")
        assert _closed(idle[0]), "the connection idle longest is still open"
        for sock in idle[1:]:  # the others are kept
            sock.settimeout(0.2)
            assert not _closed(sock)
    finally:
        for sock in idle:
            sock.close()


def test_a_new_connection_is_closed_while_all_are_busy(served):
    app, port = served
    app.hold = True
    busy = [_connect(port) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in busy:
            sock.sendall(REQUEST)
        _wait_for(lambda: app.running == MAX_CONNECTIONS)
        with _connect(port) as sock:
            assert _closed(sock), "a connection past the bound is still open"
        app.release.set()  # the busy ones are served
        for sock in busy:
            assert _response(sock).startswith(b"HTTP/1.1 200")
    finally:
        for sock in busy:
            sock.close()


def test_the_flag_is_checked():
    with pytest.raises(ValueError, match="--max-connections"):
        ServerLimits(max_connections=0)
    with pytest.raises(ValueError, match="--max-connections"):  # past the fd limit
        ServerLimits(max_connections=1 << 40)
    assert ServerLimits(max_connections=100).max_connections == 100


def test_the_default_bound_derives_from_the_raised_fd_limit(monkeypatch):
    from pagedllm.entrypoints.openai import limits

    set_to = []
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _: (1024, 20000))
    monkeypatch.setattr(limits.resource, "setrlimit", lambda _, value: set_to.append(value))
    assert limits.max_connections(None) == 20000 - limits.FD_RESERVE
    assert set_to == [(20000, 20000)]  # the soft limit raised to the hard one
    assert limits.max_connections(20000) == 20000
    with pytest.raises(ValueError, match="--max-connections"):
        limits.max_connections(20001)
