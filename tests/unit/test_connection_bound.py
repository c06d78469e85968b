"""The server's bound on open connections against a real uvicorn server on loopback (with
httptools' protocol and h11's): at the bound, a new connection closes the one that has
waited longest for its request's headers (and its request is served), else the one that
has waited longest for its request's body (answered 408; its request sees the disconnect),
or is itself closed where every connection is busy with a request whose body arrived
whole; and ``--max-connections`` is checked."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from pagedllm.entrypoints.openai.http_protocol import (
    ConnectionBound,
    ConnectionDeadlines,
    protocol_class,
)
from pagedllm.entrypoints.openai.limits import ServerLimits
from tests.unit.uvicorn_server import lifespan, running

MAX_CONNECTIONS = 8
REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
BODY_BYTES = 100
# A request whose body is still to come: the rest is sent a byte at a time, or never.
POST_HEAD = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % BODY_BYTES


class _App:
    """Reads the request's body whole (as FastAPI does before a route runs), then answers
    200 at once, or, while ``hold`` is set, once ``release`` is set; under ``/early``
    answers at once without reading it (as a 401 or 413 does). Counts the requests begun
    (``running``), and those whose client went away mid-body (``disconnected``)."""

    def __init__(self) -> None:
        self.hold = False
        self.release = threading.Event()
        self.running = 0
        self.disconnected = 0
        self.bound: ConnectionBound | None = None  # the server's, set by the fixture

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.running += 1
        if scope["path"] == "/early":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        while (message := await receive())["type"] == "http.request" and message["more_body"]:
            pass
        if message["type"] == "http.disconnect":
            self.disconnected += 1
            return
        while self.hold and not self.release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["httptools", "h11"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[_App, int]]:
    app = _App()
    http = protocol_class(header_timeout_s=30.0, send_timeout_s=30.0,
                          max_connections=MAX_CONNECTIONS)  # fmt: skip
    if request.param == "h11":  # the same deadlines and bound over h11's protocol
        attributes = {name: getattr(http, name)
                      for name in ("header_timeout_s", "send_timeout_s", "bound")}  # fmt: skip
        http = type("H11DeadlineProtocol", (ConnectionDeadlines, H11Protocol), attributes)
    app.bound = http.bound
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


def _answer_then_closed(sock: socket.socket) -> bytes:
    """Everything the server sent until it closed the connection (a reset ends it too)."""
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _trickling(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, opened in this order, each with a request's head and the
    first byte of its body sent, the rest to come."""
    socks = []
    for _ in range(count):
        sock = _connect(port)
        sock.sendall(POST_HEAD + b"x")
        socks.append(sock)
        time.sleep(0.05)  # their bodies began in this order
    return socks


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


def test_a_new_connection_closes_the_one_waiting_longest_for_its_body(served):
    """Connections that sent their heads and trickle their bodies (a byte now and then,
    within --request-body-timeout) locked every new client out: each new one closes the
    one whose body began first, with a 408, and the app's request sees the disconnect."""
    app, port = served
    trickling = _trickling(port, MAX_CONNECTIONS)
    new: list[socket.socket] = []  # kept open (idle, kept alive): each next one sheds again
    try:
        _wait_for(lambda: app.running == MAX_CONNECTIONS)
        for sock in trickling:  # still sending: a byte each
            sock.sendall(b"x")
        for shed in range(3):
            new.append(_connect(port))
            new[-1].sendall(REQUEST)
            assert _response(new[-1]).startswith(b"HTTP/1.1 200")
            answer = _answer_then_closed(trickling[shed])
            assert answer.startswith(b"HTTP/1.1 408"), answer
            _wait_for(lambda shed=shed: app.disconnected == shed + 1)
        for sock in trickling[3:]:  # the others are kept, and served once their bodies end
            sock.sendall(b"x" * (BODY_BYTES - 2))
            assert _response(sock).startswith(b"HTTP/1.1 200")
        assert app.disconnected == 3
        # Every body arrived or its connection was closed: none is left registered (a dead
        # connection left there would be picked in place of a live one).
        _wait_for(lambda: not app.bound.receiving)
        for sock in new:  # and the server keeps serving
            sock.sendall(REQUEST)
            assert _response(sock).startswith(b"HTTP/1.1 200")
    finally:
        for sock in [*trickling, *new]:
            sock.close()


def test_a_request_whose_body_arrived_is_never_closed_for_a_new_one(served):
    """Older connections busy with requests whose bodies arrived whole are kept; the one
    still receiving its body is closed for a new one, and then the new one past it."""
    app, port = served
    app.hold = True
    busy = [_connect(port) for _ in range(MAX_CONNECTIONS - 1)]
    trickling: list[socket.socket] = []
    try:
        for sock in busy:
            sock.sendall(POST_HEAD + b"x" * BODY_BYTES)
        _wait_for(lambda: app.running == MAX_CONNECTIONS - 1)
        trickling = _trickling(port, 1)
        _wait_for(lambda: app.running == MAX_CONNECTIONS)
        with _connect(port) as sock:  # takes the trickling one's place
            sock.sendall(POST_HEAD + b"x" * BODY_BYTES)
            assert _answer_then_closed(trickling[0]).startswith(b"HTTP/1.1 408")
            _wait_for(lambda: app.running == MAX_CONNECTIONS + 1)
            with _connect(port) as past:  # every connection busy: the new one is closed
                assert _closed(past), "a connection past the bound is still open"
            app.release.set()
            for kept in [*busy, sock]:
                assert _response(kept).startswith(b"HTTP/1.1 200")
        assert app.disconnected == 1
    finally:
        for sock in [*busy, *trickling]:
            sock.close()


def test_a_request_answered_before_its_body_arrived_is_not_waiting_for_it(served):
    """A response that ends before the body arrives (a 401 or 413) leaves the connection
    between requests: it is no longer registered as waiting for a body."""
    app, port = served
    with _connect(port) as sock:
        sock.sendall(POST_HEAD.replace(b"POST /", b"POST /early") + b"x")
        assert _response(sock).startswith(b"HTTP/1.1 200")
        # Well before uvicorn's keep-alive timeout (5 s) closes the connection anyway.
        _wait_for(lambda: not app.bound.receiving, timeout_s=1.0)
