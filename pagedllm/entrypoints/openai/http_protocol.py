"""uvicorn's HTTP/1.1 protocol with a deadline and a size bound for request headers, and a
deadline for a response the client stops reading.

uvicorn times out idle keep-alive connections but not a client that opens a connection and
sends its headers a byte at a time (or never): each such connection holds a socket and a
protocol object for as long as the client likes. Here a connection must complete a
request's headers within ``header_timeout_s`` of opening, or of the first byte after its
previous response; otherwise it is closed. Nor does it bound their size (httptools buffers
an unfinished header whole: two unauthenticated connections held 230 MB): past
``MAX_HEADER_BYTES`` of a request's head the connection gets a 431 and is closed.

Nor does uvicorn bound how long a response may wait on a client that stopped reading: once
the socket's buffers are full, the response's next send waits for as long as the client
holds the connection (until the server shut down, in a probe). Here a connection whose
writes stay paused (the transport's buffer past its high-water mark) for ``send_timeout_s``
is aborted, as nginx's ``send_timeout`` does; the waiting send returns, the app sees the
disconnect and aborts the request, and the buffered output is dropped.

Nor does uvicorn bound how many connections it holds (its ``limit_concurrency`` is checked
only when a request's head arrives): 24,000 connections that sent nothing took every file
descriptor of the process, and every other client's request failed until they timed out.
Here, when a connection opens while the server holds ``max_connections``, the connection
that has waited longest for its request's headers is closed (a client that opened it and
sent nothing); where none waits for headers, the one that has waited longest for the rest
of its request's body is answered 408 and closed (clients that trickled a byte every few
seconds held their connections until ``--request-body-timeout`` cut them, and reopened
them: 300 of them kept every new client out), and its request sees the disconnect; only where
every connection is busy with a request whose body has arrived whole (being computed or
streamed: never closed here) is the new one closed.

The deadlines are a mixin over uvicorn's protocol classes: httptools' (C parser, used when
installed: a saturated server parses and writes tens of thousands of events a second) or
h11's (pure Python).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from pagedllm.logger import init_logger

logger = init_logger(__name__)

# A request line and its headers, at most (nginx's default is 8-32 KB).
MAX_HEADER_BYTES = 64 << 10
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


# At most one log line in this many seconds about connections closed at the bound: a flood
# of connections would otherwise flood the log.
BOUND_LOG_INTERVAL_S = 10.0


class ConnectionBound:
    """One server's bound on its connections: those waiting for a request's headers (a
    header deadline armed) and those waiting for the rest of a request's body, each oldest
    first, and the counts closed at the bound not yet logged."""

    def __init__(self, max_connections: int | None) -> None:
        self.max_connections = max_connections  # None: unbounded
        # Insertion-ordered: the first is the one that has waited longest (O(1) to find).
        self.waiting: dict[ConnectionDeadlines, None] = {}
        # Insertion-ordered too, by when the body began; exactly the connections whose
        # ``_receiving_body()`` holds (kept by ``ConnectionDeadlines._track_body``).
        self.receiving: dict[ConnectionDeadlines, None] = {}
        self.closed_waiting = 0  # since the last log line
        self.closed_receiving = 0
        self.closed_new = 0
        self._last_logged = -math.inf
        self._log_line: asyncio.TimerHandle | None = None

    def make_room(self, new: ConnectionDeadlines) -> bool:
        """``new`` took the server past its bound: close the connection that has waited
        longest for its request's headers, else the one that has waited longest for its
        request's body, else ``new`` itself (False: every other one is busy with a request
        whose body has arrived whole)."""
        kept = True
        if self.waiting:
            next(iter(self.waiting))._close_waiting()
            self.closed_waiting += 1
        elif self.receiving:
            next(iter(self.receiving))._close_receiving()
            self.closed_receiving += 1
        else:
            new._close_at_bound()
            self.closed_new += 1
            kept = False
        self._schedule_log(new.loop)
        return kept

    def _schedule_log(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._log_line is None:  # the first of a burst: logged with the burst's first second
            at = max(loop.time() + 1.0, self._last_logged + BOUND_LOG_INTERVAL_S)
            self._log_line = loop.call_at(at, self._log, loop)

    def _log(self, loop: asyncio.AbstractEventLoop) -> None:
        self._log_line = None
        self._last_logged = loop.time()
        logger.warning(
            "Open connections at their bound (--max-connections %d): closed %d that had "
            "waited longest for a request's headers, %d that had waited longest for a "
            "request's body (answered 408) and %d new ones (every connection busy with a "
            "request) since the last such line",
            self.max_connections, self.closed_waiting, self.closed_receiving, self.closed_new,
        )  # fmt: skip
        self.closed_waiting = self.closed_receiving = self.closed_new = 0


class ConnectionDeadlines:
    """Mixed in before a uvicorn protocol class (which provides ``loop``, ``transport``,
    ``cycle``, ``connections``); ``header_timeout_s``, ``send_timeout_s`` and ``bound``
    are set per server by ``protocol_class``."""

    header_timeout_s = 20.0
    send_timeout_s = 60.0
    bound = ConnectionBound(None)
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    connections: set[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # of the request whose head is still arriving
        # Armed while the transport has paused writing (its buffer is full); resuming disarms.
        self._send_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]  # adds it to connections
        bound = self.bound
        past = bound.max_connections is not None and len(self.connections) > bound.max_connections
        if past and not bound.make_room(self):
            return  # closed: every other connection is busy with a request
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self._between_requests():
            self._arm()  # the first bytes of a next request on a kept-alive connection
        cycle = self.cycle
        super().data_received(data)  # type: ignore[misc]
        self._track_body()  # the parser may have begun a request's body, or ended it
        if self.cycle is not cycle:  # a new request cycle began: its headers are complete
            self._disarm()
        elif self._header_deadline is not None:  # still in a request's head
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self._disarm()
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_send()
        self.bound.receiving.pop(self, None)
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        # Called by the request's cycle as its response ends (from the app's send): the
        # connection may start a pipelined request (h11 parses it here), or wait no more.
        super().on_response_complete()  # type: ignore[misc]
        self._track_body()

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(self.send_timeout_s, self._send_expired)

    def resume_writing(self) -> None:
        self._disarm_send()
        super().resume_writing()  # type: ignore[misc]

    def _disarm_send(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_expired(self) -> None:
        self._send_deadline = None
        logger.info(
            "A client read nothing of its response for %g s: connection closed "
            "(--response-send-timeout)", self.send_timeout_s,
        )  # fmt: skip
        # abort, not close: close would wait to flush a buffer the client never reads.
        self.transport.abort()

    def _receiving_body(self) -> bool:
        """Whether the connection waits for the rest of a request's body, and for nothing
        else: no response finished on the request (one answered early, without reading the
        body, leaves the connection between requests), and with httptools no pipelined
        request queued (the one before it, whose body is whole, is being served)."""
        cycle = self.cycle
        return (
            cycle is not None
            and cycle.more_body  # uvicorn's flag: False once the parser ends the body
            and not cycle.response_complete
            and not getattr(self, "pipeline", None)  # httptools' queue; h11 has none
        )

    def _track_body(self) -> None:
        """In ``bound.receiving`` exactly while ``_receiving_body()``: checked wherever it
        may change (data parsed, a response ended, the connection lost)."""
        if self._receiving_body():
            self.bound.receiving.setdefault(self, None)  # keeps its place: when it began
        else:
            self.bound.receiving.pop(self, None)

    def _close_waiting(self) -> None:
        self._disarm()
        self._close_at_bound()

    def _close_receiving(self) -> None:
        # Out of the registry at once, as ``_close_at_bound`` takes it out of the count.
        self.bound.receiving.pop(self, None)
        if not self.cycle.response_started:  # a 408 where it can still be answered;
            self.transport.write(_TIMED_OUT)  # the abort drops it if the buffer is full
        # The app's receive then gets http.disconnect (uvicorn's connection_lost), and
        # its request ends there: nothing of its body was handed on whole.
        self._close_at_bound()

    def _close_at_bound(self) -> None:
        # abort, not close: close would wait to flush. Out of the count at once (uvicorn
        # drops it when the connection is lost, a turn of the loop later): the next
        # connection accepted in this turn must not close another for it.
        self.transport.abort()
        self.connections.discard(self)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._header_bytes = 0
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._expire)
        self.bound.waiting[self] = None

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
            self.bound.waiting.pop(self, None)

    def _expire(self) -> None:
        self._header_deadline = None
        self.bound.waiting.pop(self, None)
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


def protocol_class(
    header_timeout_s: float, send_timeout_s: float, max_connections: int | None = None
) -> type:
    """The protocol class for one server (uvicorn builds one per connection); at most
    ``max_connections`` open connections (None: unbounded)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base: type = HttpToolsProtocol
    except ImportError:  # httptools not installed
        base = H11Protocol
    attributes = {
        "header_timeout_s": header_timeout_s,
        "send_timeout_s": send_timeout_s,
        "bound": ConnectionBound(max_connections),  # shared by the server's connections
    }
    return type("DeadlineProtocol", (ConnectionDeadlines, base), attributes)
