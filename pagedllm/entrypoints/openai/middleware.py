"""ASGI middleware: the API key, request body bounds, draining at shutdown, unhandled
errors, and waiting on a client that may hang up.

All pure ASGI (not BaseHTTPMiddleware), so streamed responses and client disconnects pass
through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.entrypoints.openai.docs import ASSETS
from pagedllm.entrypoints.openai.errors import error_body_for
from pagedllm.entrypoints.openai.errors import route_path as _path
from pagedllm.entrypoints.openai.http_protocol import MAX_HEADER_BYTES
from pagedllm.entrypoints.openai.limits import MAX_REQUEST_ID
from pagedllm.entrypoints.openai.web_ui import FILES as WEB_UI_FILES
from pagedllm.logger import init_logger

logger = init_logger(__name__)

T = TypeVar("T")

# Who sent a request, as far as stored state (the Responses store) is concerned: the
# indices of the configured API keys it presented, or None on a server without keys. Opaque
# and free of the keys themselves, so it can be kept and compared but reveals nothing.
KeyOwner = frozenset[int] | None

# The key of ``scope["state"]`` (Starlette's ``request.state``) that holds the owner.
API_KEY_OWNER = "api_key_owner"

# Open without a key: probes and scrapers, and the API docs.
OPEN_PATHS = frozenset(
    {
        "/health",
        "/ping",
        "/metrics",
        "/version",
        "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json",
        "/redoc",
        *ASSETS,  # the docs pages' scripts, served offline
        *WEB_UI_FILES,  # the chat page (it asks for the key itself)
    }
)


async def _send_error(
    scope: dict, receive: Any, send: Any, message: str, status: int, headers: dict | None = None
) -> None:
    body = error_body_for(scope, message, status)  # Anthropic-shaped under /v1/messages
    response = JSONResponse(body, status_code=status, headers=headers)
    await response(scope, receive, send)


class _TrackedSend:
    """An ASGI ``send`` that remembers whether the response has started (once it has, an
    error can no longer be answered with a response of its own) and whether sending
    failed (the server's own send raises only when the connection is gone)."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.started = False
        self.failed = False

    async def __call__(self, message: dict) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        try:
            await self.send(message)
        except Exception:
            self.failed = True
            raise


class ApiKeyMiddleware:
    """Every route but OPEN_PATHS needs one of the keys, as ``Authorization: Bearer <key>``
    (the scheme name case-insensitive, as HTTP defines it) or as ``x-api-key: <key>``, the
    header Anthropic's clients send (vLLM takes only the first); 401 otherwise. Where both
    headers are sent, both must hold a key (one of them wrong is a 401), and either header
    sent twice is a 401 too, whatever the values: accepting on one of them (``dict`` took
    the last; a right ``x-api-key`` let a wrong Bearer token through) disagrees with a
    proxy in front that checks the other."""

    _CREDENTIALS = (b"authorization", b"x-api-key")

    def __init__(self, app: Any, api_keys: list[str]) -> None:
        self.app = app
        self.expected = [key.encode() for key in api_keys]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or _path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        repeated = self._repeated(scope["headers"])
        if repeated is not None:
            message = f"The request has more than one '{repeated}' header: send one."
            await _send_error(scope, receive, send, message, 401)
            return
        owner = self._owner(dict(scope["headers"]))
        if owner is None:
            message = (
                "Missing or invalid API key (send 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>'; each of them sent must hold a valid key)."
            )
            await _send_error(scope, receive, send, message, 401)
            return
        # Where request.state reads it (Starlette keeps scope["state"] as the dict behind
        # it), so stored responses can be scoped to the key(s) that created them.
        scope.setdefault("state", {})[API_KEY_OWNER] = owner
        await self.app(scope, receive, send)

    @classmethod
    def _repeated(cls, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The credential header sent more than once, if any."""
        seen: set[bytes] = set()
        for raw_name, _ in headers:
            name = raw_name.lower()  # ASGI servers lower-case them; not every caller does
            if name in cls._CREDENTIALS:
                if name in seen:
                    return name.decode()
                seen.add(name)
        return None

    def _owner(self, headers: dict[bytes, bytes]) -> frozenset[int] | None:
        """The indices of the configured keys the request presented (the same set whether a
        key comes in one header or both); None unless a credential header was sent and
        every one sent holds a key."""
        given = self._given(headers)
        if not given:
            return None
        # Every comparison runs (constant time: lists, not short-circuiting generators),
        # whichever key matches and whichever header is wrong.
        hits = [[secrets.compare_digest(g, key) for key in self.expected] for g in given]
        if not all(any(row) for row in hits):
            return None
        return frozenset(index for row in hits for index, hit in enumerate(row) if hit)

    @staticmethod
    def _given(headers: dict[bytes, bytes]) -> list[bytes] | None:
        """The value each credential header sent holds: the token of ``Authorization`` and
        the value of ``x-api-key``; None where ``Authorization`` has a scheme other than
        Bearer (it holds no key, and a header sent must hold one)."""
        given = []
        if (authorization := headers.get(b"authorization")) is not None:
            scheme, _, credentials = authorization.partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            given.append(credentials.strip())
        if (x_api_key := headers.get(b"x-api-key")) is not None:
            given.append(x_api_key.strip())
        return given


def request_owner(request: Request) -> KeyOwner:
    """The owner ``ApiKeyMiddleware`` recorded for ``request``; None without ``--api-key``
    (every request is then the same owner)."""
    return getattr(request.state, API_KEY_OWNER, None)


class _BodyRefused(StarletteHTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body reader passes it on to
    the app's HTTP error handler (any other error there becomes a generic 400)."""

    def __init__(self, message: str, status: int) -> None:
        # The rest of the body is not read: the connection cannot be reused.
        super().__init__(status, message, headers={"Connection": "close"})


# The slowest a body may arrive on the whole, after ``timeout_s``: without a floor, a
# piece every ``timeout_s`` held a connection and its coroutine for as long as the client
# liked (a byte every 25 s), and thousands of such clients hold every file descriptor.
# 64 kbit/s: a congested mobile uplink still sends a few megabytes of images in time.
MIN_BODY_BYTES_PER_S = 8 * 1024


class HeaderSizeMiddleware:
    """A request head past ``MAX_HEADER_BYTES`` is a 431 (and the connection closes). The
    protocol (``http_protocol``) cuts a head still arriving past the bound; one that came
    whole in a single read (a 128 KB header was answered) is caught here."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _head_bytes(scope) > MAX_HEADER_BYTES:
            message = f"The request's headers exceed {MAX_HEADER_BYTES} bytes."
            await _send_error(scope, receive, send, message, 431, {"Connection": "close"})
            return
        await self.app(scope, receive, send)


def _head_bytes(scope: dict) -> int:
    """The request line and headers as sent, near enough (names, values, separators)."""
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class RequestBodyMiddleware:
    """Bounds on reading a request body: at most ``max_bytes`` (413, before reading when
    Content-Length says so), each next piece within ``timeout_s``, and the whole body within
    ``timeout_s`` plus 1 s per ``MIN_BODY_BYTES_PER_S`` of it (408). Once the body is
    complete, reads wait freely (for a disconnect). A body must be uncompressed JSON (415
    otherwise); one sent without a Content-Type is read as JSON, unless a web page sent it.
    Errors are OpenAI-shaped."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # duplicates: the last (every one where it matters)
        has_body = _has_body(headers)
        unread = self._refused_unread(scope["headers"], headers, has_body)
        if unread is not None:
            await self._refuse(scope, receive, send, unread)
            return
        if has_body:
            scope = _json_by_default(scope)
        received, body_done = 0, False
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def guarded_receive() -> dict:
            nonlocal received, body_done
            if body_done:
                return await receive()
            left = started + self.timeout_s + received / MIN_BODY_BYTES_PER_S - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), min(self.timeout_s, left))
            except asyncio.TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        tracked = _TrackedSend(send)
        try:
            await self.app(scope, guarded_receive, tracked)
        except _BodyRefused as refused:
            if tracked.started:
                raise
            await self._refuse(scope, receive, send, refused)

    def _refused_unread(
        self, raw: list[tuple[bytes, bytes]], headers: dict[bytes, bytes], has_body: bool
    ) -> _BodyRefused | None:
        """The refusal the headers alone call for (``raw`` as sent, ``headers`` by name): a
        body declared too large, compressed, or of a media type other than JSON."""
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return self._too_large()
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"", b"identity"):
            return self._encoded(encoding)
        if has_body:
            return self._untyped_or_not_json(raw)
        return None

    @classmethod
    def _untyped_or_not_json(cls, headers: list[tuple[bytes, bytes]]) -> _BodyRefused | None:
        # Every Content-Type sent is checked: FastAPI reads the first, a dict the last.
        sent = [value for name, value in headers if name == b"content-type" and value.strip()]
        wrong = next((value for value in sent if not _is_json(value)), None)
        if wrong is not None:
            return cls._not_json(wrong)
        if not sent and any(name == b"origin" for name, _ in headers):
            # A page sends a body without a type (a Blob) with no CORS preflight: read as
            # JSON, any site a browser opens could run requests on a server without a key.
            # Clients that send no type (curl -T, scripts) send no Origin either.
            return cls._untyped_from_a_page()
        return None

    def _too_slow(self) -> _BodyRefused:
        message = (
            f"The request body did not arrive within {self.timeout_s:g} s for each piece "
            f"and {self.timeout_s:g} s plus 1 s per {MIN_BODY_BYTES_PER_S // 1024} KiB for "
            "the whole body (--request-body-timeout)."
        )
        return _BodyRefused(message, 408)

    @staticmethod
    def _encoded(encoding: bytes) -> _BodyRefused:
        # No body is decoded here: a gzip body was read as if plain (and its bounds would
        # be the compressed size's, not what it inflates to).
        name = encoding.decode("latin-1")[:40]
        message = f"Content-Encoding {name!r} is not supported: send the body uncompressed."
        return _BodyRefused(message, 415)

    @staticmethod
    def _not_json(content_type: bytes) -> _BodyRefused:
        # Every route with a body reads JSON: a form or text body was refused as "Input
        # should be a valid dictionary", which named neither the header nor the fix.
        name = content_type.decode("latin-1")[:80]
        message = (
            f"Content-Type {name!r} is not supported: send the body as JSON, with "
            "'Content-Type: application/json' (or no Content-Type)."
        )
        return _BodyRefused(message, 415)

    @staticmethod
    def _untyped_from_a_page() -> _BodyRefused:
        message = (
            "The request body has no Content-Type and the request comes from a web page "
            "(it sends Origin): send the body as JSON, with 'Content-Type: application/json'."
        )
        return _BodyRefused(message, 415)

    def _too_large(self) -> _BodyRefused:
        message = (
            f"The request body is larger than {self.max_bytes} bytes (--max-request-body-bytes)."
        )
        return _BodyRefused(message, 413)

    @staticmethod
    async def _refuse(scope: dict, receive: Any, send: Any, refused: _BodyRefused) -> None:
        await _send_error(
            scope, receive, send, str(refused.detail), refused.status_code, refused.headers
        )


def _has_body(headers: dict[bytes, bytes]) -> bool:
    """Whether the request sends a body (``curl -X POST -d ''`` sends a form type and none)."""
    length = headers.get(b"content-length", b"")
    return (length.isdigit() and int(length) > 0) or b"transfer-encoding" in headers


def _is_json(content_type: bytes) -> bool:
    """``application/json`` or ``application/*+json`` (FastAPI's rule), any parameters."""
    media_type = content_type.split(b";", 1)[0].strip().lower()
    if media_type == b"application/json":
        return True
    return media_type.startswith(b"application/") and media_type.endswith(b"+json")


def _json_by_default(scope: dict) -> dict:
    """The scope of a request with a body, with ``Content-Type: application/json`` where it
    came without a type (or with an empty one): some clients send none, and FastAPI 0.132 on
    reads such a body as bytes, which no request model accepts (a 400 that named no header)."""
    headers = scope["headers"]
    if any(value.strip() for name, value in headers if name == b"content-type"):
        return scope
    untyped = [(name, value) for name, value in headers if name != b"content-type"]
    return {**scope, "headers": [*untyped, (b"content-type", b"application/json")]}


class ServingStateMiddleware:
    """Counts the API requests in progress, and while the server drains (after SIGTERM)
    answers new ones with 503 so load balancers move traffic elsewhere."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state  # ServingState

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            message = "The server is shutting down; send the request to another replica."
            await _send_error(scope, receive, send, message, 503, {"Connection": "close"})
            return
        self.state.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.active -= 1


class ErrorMiddleware:
    """An error nothing else handled: logged once, answered with a 500 that names a
    reference in the log (never the error's text, which may hold server internals)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if tracked.failed:  # a client that hung up (or never read): nothing to answer
                logger.info("The client of %s went away mid-response (%s)", _path(scope), exc)
                return
            reference = uuid.uuid4().hex[:12]
            logger.exception("Unhandled error serving %s (reference %s)", _path(scope), reference)
            if tracked.started:
                return  # the response is under way: the client sees it cut short
            message = f"Internal server error (reference {reference}; see the server log)."
            await _send_error(scope, receive, send, message, 500)


# uvicorn writes no access line for a response it cannot send (the client is gone), so a
# client that hung up on a long request left no trace; the line is written here, on
# uvicorn's access logger (its format; off with --disable-uvicorn-access-log as the rest).
_access_log = logging.getLogger("uvicorn.access")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``; if the client hangs up first, cancel it (aborting its requests) and
    write the request's access line with status 499 (nginx's "client closed request")."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        listener.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    _log_hang_up(request)
    return None


def _log_hang_up(request: Request) -> None:
    client = request.client
    where = f"{client.host}:{client.port}" if client else "-"
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    version = request.scope.get("http_version", "1.1")
    # uvicorn's message and arguments: its AccessFormatter unpacks exactly these five.
    _access_log.info('%s - "%s %s HTTP/%s" %d', where, request.method, path, version, 499)


async def _disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class RequestIdHeaderMiddleware:
    """``--enable-request-id-headers``: every response carries ``X-Request-Id``, the
    request's own when it sent one (for tracing across proxies), else a new one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id")
        if given is not None and len(given) > MAX_REQUEST_ID:
            # Echoed on the response: a 32 MiB header came back whole.
            message = f"X-Request-Id is {len(given)} bytes; at most {MAX_REQUEST_ID} are allowed."
            await _send_error(scope, receive, send, message, 400)
            return
        request_id = given if given else uuid.uuid4().hex.encode()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class AccessLogFilter:
    """``--disable-access-log-for-endpoints``: uvicorn's access log without the lines of
    these paths (health probes and scrapers would flood it)."""

    def __init__(self, paths: set[str]) -> None:
        self.paths = paths

    def filter(self, record: Any) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].split("?", 1)[0] not in self.paths
        return True
