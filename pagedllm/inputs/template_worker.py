"""A chat-template render worker: ``python -m pagedllm.inputs.template_worker``.

Started by ``TemplateSandbox``. Reads framed ``ChatRender`` jobs on stdin and answers each
on stdout. The process bounds itself: its address space may grow by ``--memory-bytes``
past what it holds after start-up (RLIMIT_AS, so an allocation past it raises MemoryError
instead of growing the server), a render that runs past ``--timeout`` seconds of Python
code is interrupted by an alarm, and an output past ``--max-chars`` is refused. The
parent also kills a worker that does not answer in time (one long C-level operation
cannot be interrupted from inside).

Frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. An answer is
``{"text": ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import struct
import sys
from typing import Any, BinaryIO

_HEADER = struct.Struct(">I")


class RenderTimeout(BaseException):
    """Raised by the alarm inside the template's code: a BaseException, so neither the
    template's nor the renderer's ``except Exception`` can swallow it."""


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame's payload, or None at end of input."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _limit_memory(extra_bytes: int) -> None:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmSize:"))
    current = int(line.split()[1]) * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _on_alarm(signum: int, frame: Any) -> None:
    raise RenderTimeout


def answer(job: bytes, timeout: float, max_chars: int) -> dict[str, str]:
    from pagedllm.inputs.chat import ChatRender, render_chat

    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        text = render_chat(ChatRender.from_json(job))
    except RenderTimeout:
        return {"error": f"The chat template took longer than {timeout:g} s to render."}
    except MemoryError:
        return {"error": "The chat template used more memory than a render may use."}
    except ValueError as exc:
        return {"error": str(exc)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if len(text) > max_chars:
        return {"error": f"The rendered chat is longer than {max_chars} characters."}
    return {"text": text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--max-chars", type=int, required=True)
    args = parser.parse_args(argv)
    # Imported before the limit is set: what the renderer needs is held from the start.
    from transformers.utils.chat_template_utils import render_jinja_template  # noqa: F401

    from pagedllm.inputs.chat import render_chat  # noqa: F401

    signal.signal(signal.SIGALRM, _on_alarm)
    _limit_memory(args.memory_bytes)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (job := read_frame(stdin)) is not None:
        try:
            reply = answer(job, args.timeout, args.max_chars)
            payload = json.dumps(reply, ensure_ascii=False).encode()
        except MemoryError:
            payload = b'{"error": "The chat template used more memory than a render may use."}'
        write_frame(stdout, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
