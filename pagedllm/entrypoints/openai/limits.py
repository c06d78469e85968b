"""Every bound the server puts on what a client may send or hold, in one place.

Each is a flag of ``pagedllm serve``; ``ServerLimits.from_args`` reads them once.
"""

from __future__ import annotations

import argparse
import resource
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import Field

MiB = 1 << 20
# JSON objects a request body may hold (``json_body``), and items a list of objects in a
# request model may hold (``BoundedList``, checked before its items: a million scalars
# where messages belong built a million validation errors, 4 s and 1.3 GB on the event
# loop). Each object is validated on the loop (1.5 million messages held it 7 s); real
# requests hold a few thousand (a long conversation, a hundred tools' schemas). Arrays of
# numbers or strings (token ids, prompts) are not counted: they validate in bulk.
MAX_JSON_OBJECTS = 1 << 16
# Keys in all of a body's objects together: one object (a logit_bias, chat_template_kwargs)
# of 4.6 million keys held the loop 3.3 s. Room for a logit_bias over a 256k vocabulary.
MAX_JSON_KEYS = 1 << 19
# Arrays and values of all kinds in a body, counted on its bytes before it is parsed: the
# parser builds every value first, ~60 bytes of Python objects from 2-5 bytes of body
# (21 million empty lists in 63 MB took 3 GB, four such bodies 13 GB). Arrays get the
# objects' bound; values room for 32 prompts of 128k token ids.
MAX_JSON_ARRAYS = MAX_JSON_OBJECTS
MAX_JSON_VALUES = 1 << 22
_Item = TypeVar("_Item")
BoundedList = Annotated[list[_Item], Field(max_length=MAX_JSON_OBJECTS)]
# The longest request id a client may give (the body's ``request_id``, the X-Request-Id
# header): both are echoed back, in every streamed chunk and in the log.
MAX_REQUEST_ID = 256


@dataclass(frozen=True)
class ServerLimits:
    # A request body past this is refused with 413 before it is read in full.
    max_request_body_bytes: int = 64 * MiB
    # A connection must deliver a request's headers within this many seconds of its
    # first byte (or of opening), else it is closed: slow clients cannot hold sockets.
    request_header_timeout_s: float = 20.0
    # Seconds the server waits for each next piece of a request body (408 past it).
    request_body_timeout_s: float = 30.0
    # A response whose client reads nothing of it for this many seconds (the socket's
    # buffers full) loses its connection, and its request is aborted (nginx: 60 s).
    response_send_timeout_s: float = 60.0
    # Sequences waiting for the scheduler beyond which new requests get 503 with
    # Retry-After (None: unbounded, as vLLM).
    max_waiting_requests: int | None = None
    # The largest n (and best_of) one request may ask for; None: the engine's max_num_seqs.
    max_n: int | None = None
    # On SIGTERM: seconds running requests get to finish before their streams are ended;
    # 0 (vLLM's default) ends them at once.
    shutdown_timeout_s: float = 0.0
    # A chat template render past this many seconds is a 400.
    chat_template_render_timeout_s: float = 10.0
    # /v1/responses keeps this many finished responses in memory (for retrieval and
    # previous_response_id), evicting the oldest; 0 keeps none.
    max_stored_responses: int = 1000
    # ... and at most this many bytes of them (their JSON): a client could otherwise make
    # the server hold 1000 responses of 64 MiB requests each.
    max_stored_response_bytes: int = 256 << 20
    # Background /v1/responses queued or running at once (503 with Retry-After past it):
    # they hold no connection, so nothing else bounds what one client queues (1,200 creates
    # held 1,069 requests waiting). At most --max-stored-responses: a live response is never
    # evicted, so more would push finished ones out of the store as they finish.
    max_background_responses: int = 256
    # Open connections the server holds; past it the one that has waited longest for its
    # request's headers is closed (or the new one, where all are busy with requests).
    # None: derived from the file-descriptor limit (``max_connections``).
    max_connections: int | None = None

    def __post_init__(self) -> None:
        positive = {
            "--max-request-body-bytes": self.max_request_body_bytes,
            "--request-header-timeout": self.request_header_timeout_s,
            "--request-body-timeout": self.request_body_timeout_s,
            "--response-send-timeout": self.response_send_timeout_s,
            "--chat-template-render-timeout": self.chat_template_render_timeout_s,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}.")
        if self.shutdown_timeout_s < 0:
            raise ValueError(f"--shutdown-timeout must be >= 0, got {self.shutdown_timeout_s}.")
        if self.max_stored_response_bytes < 0:
            raise ValueError(
                f"--max-stored-response-bytes must be >= 0, got {self.max_stored_response_bytes}."
            )
        if self.max_stored_responses < 0:
            raise ValueError(
                f"--max-stored-responses must be >= 0, got {self.max_stored_responses}."
            )
        if self.max_background_responses < 1:
            raise ValueError(
                "--max-background-responses must be at least 1, got "
                f"{self.max_background_responses}."
            )
        for flag, value in (("--max-waiting-requests", self.max_waiting_requests),
                            ("--max-n", self.max_n),
                            ("--max-connections", self.max_connections)):  # fmt: skip
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}.")
        if self.max_connections is not None:  # before anything loads; again at start
            _check_connections(self.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerLimits:
        return cls(
            max_request_body_bytes=args.max_request_body_bytes,
            request_header_timeout_s=args.request_header_timeout,
            request_body_timeout_s=args.request_body_timeout,
            response_send_timeout_s=args.response_send_timeout,
            max_waiting_requests=args.max_waiting_requests,
            max_n=args.max_n,
            shutdown_timeout_s=args.shutdown_timeout,
            chat_template_render_timeout_s=args.chat_template_render_timeout,
            max_stored_responses=args.max_stored_responses,
            max_stored_response_bytes=args.max_stored_response_bytes,
            max_background_responses=args.max_background_responses,
            max_connections=args.max_connections,
        )


# File descriptors the server process keeps apart from its connections (derived bound only):
# its own files, sockets and pipes (listening and metrics sockets, the engine's ZMQ sockets
# and their eventfds, the template workers' pipes, thread pools', log files: well under
# 512), plus connections accepted before the bound sees them: the loop accepts up to the
# listen backlog (uvicorn's 2,048) in one turn, and another batch in the next turn before
# the first one's closes release their descriptors. 10% of larger limits.
FD_RESERVE = 512 + 2 * 2048


def max_connections(requested: int | None) -> int | None:
    """The server's bound on open connections, at its start: raises the process's soft
    file-descriptor limit to its hard one (as vLLM does; kept where it cannot be raised),
    then ``requested`` (--max-connections, an error past the limit) or the limit less a
    reserve (``FD_RESERVE``, or 10% of it; at least half the limit). None: unbounded (a
    limit of RLIM_INFINITY)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY
            pass
    if requested is not None:
        _check_connections(requested, soft)
        return requested
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - max(FD_RESERVE, soft // 10), soft // 2)


def _check_connections(requested: int, fd_limit: int) -> None:
    if fd_limit != resource.RLIM_INFINITY and requested > fd_limit:
        raise ValueError(
            f"--max-connections {requested} is past this process's file-descriptor limit "
            f"(RLIMIT_NOFILE {fd_limit}): each connection holds one. Lower it, or raise the "
            "limit (ulimit -n)."
        )


def add_limit_flags(flag: Any) -> None:
    """Declare the limits with ``flag(name, **argparse_kwargs)`` (the server's helper)."""
    defaults = ServerLimits()
    flag("max-request-body-bytes", type=int, default=defaults.max_request_body_bytes,
         help="largest request body accepted, in bytes (413 past it)")  # fmt: skip
    flag("request-header-timeout", type=float, default=defaults.request_header_timeout_s,
         help="seconds a connection has to send a request's headers")  # fmt: skip
    flag("request-body-timeout", type=float, default=defaults.request_body_timeout_s,
         help="seconds to wait for each next piece of a request body, and for the whole "
              "body beyond 1 s per 8 KiB of it (408)")  # fmt: skip
    flag("response-send-timeout", type=float, default=defaults.response_send_timeout_s,
         help="seconds a response may wait on a client that reads none of it before the "
              "connection is closed and the request aborted")  # fmt: skip
    flag("max-waiting-requests", type=int, default=None,
         help="sequences that may wait to be scheduled (503 past it; default: none)")  # fmt: skip
    flag("max-n", type=int, default=None,
         help="largest n / best_of per request (default: --max-num-seqs)")  # fmt: skip
    flag("shutdown-timeout", type=float, default=defaults.shutdown_timeout_s,
         help="on SIGTERM, seconds running requests get to finish before they are ended "
              "(0, vLLM's default: ended at once)")  # fmt: skip
    flag("chat-template-render-timeout", type=float,
         default=defaults.chat_template_render_timeout_s,
         help="seconds a chat template may take to render (400 past it)")  # fmt: skip
    flag("max-stored-responses", type=int, default=defaults.max_stored_responses,
         help="finished /v1/responses kept for retrieval and previous_response_id, oldest "
              "evicted first (0: none)")  # fmt: skip
    flag("max-stored-response-bytes", type=int, default=defaults.max_stored_response_bytes,
         help="bytes (as JSON) the stored /v1/responses may take, oldest out first; as "
              "many again for the events of ended background streams")  # fmt: skip
    flag("max-background-responses", type=int, default=defaults.max_background_responses,
         help="background /v1/responses queued or running at once, at most "
              "--max-stored-responses (503 with Retry-After past it)")  # fmt: skip
    flag("max-connections", type=int, default=None,
         help="open connections held at once; past it the one waiting longest for its "
              "request's headers is closed, else the one waiting longest for its body (a 408) "
              "(default: the file-descriptor limit, raised to its hard limit, less a "
              "reserve)")  # fmt: skip
