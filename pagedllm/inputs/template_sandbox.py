"""Chat templates rendered in worker processes bounded in time and memory.

A chat template is a program, and the messages it walks come from clients: a template with
nested loops, or a string multiplied past memory, must fail one request with a 400, never
stall the server's event loop or grow its memory. Each render runs in one of a few worker
processes (``template_worker.py``) that limit their own memory and time; a worker that
does not answer within the timeout is killed and replaced. The event loop only waits.
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import threading
from dataclasses import dataclass

from pagedllm.executor.parent_watch import module_argv, spawn_owned
from pagedllm.inputs.chat import ChatRender
from pagedllm.inputs.template_worker import read_frame, write_frame
from pagedllm.logger import init_logger

logger = init_logger(__name__)


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on one render."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30  # growth allowed past the worker's start-up footprint
    max_chars: int = 64 << 20


class _Worker:
    """One render process, used by one thread at a time."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        limits = self.limits
        return spawn_owned(
            module_argv(
                "pagedllm.inputs.template_worker",
                "--timeout",
                str(limits.timeout_s),
                "--memory-bytes",
                str(limits.memory_bytes),
                "--max-chars",
                str(limits.max_chars),
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def render(self, job: ChatRender) -> str:
        """The rendered text; ValueError (a 400 for the caller) when the template fails,
        runs too long or uses too much memory."""
        if self.process.poll() is not None:
            self.process = self._spawn()
        proc = self.process
        assert proc.stdin is not None and proc.stdout is not None
        try:
            write_frame(proc.stdin, job.to_json().encode())
        except (BrokenPipeError, OSError):
            self.restart()
            raise ValueError("The chat template renderer stopped; try again.") from None
        # The worker stops itself at the timeout; the margin covers its start-up import.
        ready, _, _ = select.select([proc.stdout], [], [], self.limits.timeout_s + 5.0)
        payload = read_frame(proc.stdout) if ready else None
        if payload is None:
            self.restart()
            if ready:  # its output ended: the worker died without answering
                raise ValueError("The chat template renderer stopped while rendering.")
            raise ValueError(
                f"The chat template took longer than {self.limits.timeout_s:g} s to render."
            )
        reply = json.loads(payload)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply["text"]

    def restart(self) -> None:
        self.kill()
        self.process = self._spawn()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class TemplateSandbox:
    """A pool of render workers: ``await sandbox.render(job)`` from the event loop."""

    def __init__(self, num_workers: int = 2, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self._workers = [_Worker(self.limits) for _ in range(num_workers)]
        self._idle: asyncio.Queue[_Worker] | None = None
        self._lock = threading.Lock()

    async def render(self, job: ChatRender) -> str:
        idle = self._idle_queue()
        worker = await idle.get()
        try:
            return await asyncio.to_thread(worker.render, job)
        finally:
            idle.put_nowait(worker)

    def _idle_queue(self) -> asyncio.Queue[_Worker]:
        with self._lock:
            if self._idle is None:
                self._idle = asyncio.Queue()
                for worker in self._workers:
                    self._idle.put_nowait(worker)
            return self._idle

    def close(self) -> None:
        for worker in self._workers:
            worker.kill()
