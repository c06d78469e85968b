"""Graceful shutdown: SIGTERM (or a first Ctrl-C) drains instead of dropping streams.

While draining, ``/health`` answers 503 and new API requests get 503 (so a load balancer
moves traffic elsewhere); requests already running get ``shutdown_timeout_s`` to finish
(``--shutdown-timeout``; 0, vLLM's default, gives them none). Those still running then are
aborted: their streams end cleanly, with finish_reason "abort" and ``[DONE]``. Then the
server stops and the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType

import uvicorn

from pagedllm.logger import init_logger

logger = init_logger(__name__)

# After aborting what still runs, how long the aborted streams get to send their end.
_ABORT_GRACE_S = 5.0


@dataclass
class ServingState:
    draining: bool = False
    active: int = 0  # API requests in progress (ServingStateMiddleware counts them)


class GracefulServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: ServingState,
        timeout_s: float,
        abort_all: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(config)
        self.state = state
        self.timeout_s = timeout_s
        self.abort_all = abort_all
        self._drain_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()  # signal handlers schedule the drain on it
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after a clean stop
        # and the process would end by the signal instead of exiting 0.
        if self.state.draining or sig not in (signal.SIGTERM, signal.SIGINT):
            if self.state.draining:
                logger.info("A second signal: stopping now, without waiting for requests.")
            self.should_exit = True
            self.force_exit = self.state.draining
            return
        self.state.draining = True
        if self.timeout_s > 0:
            logger.info(
                "Draining: %d request(s) in progress get up to %gs to finish.",
                self.state.active,
                self.timeout_s,
            )
        else:  # vLLM's default: abort what runs (each stream still ends cleanly)
            logger.info("Shutting down: ending %d request(s) in progress.", self.state.active)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        if not await self._wait_idle(self.timeout_s):
            logger.info("Ending %d request(s) still running.", self.state.active)
            await self.abort_all()
            await self._wait_idle(_ABORT_GRACE_S)
        self.should_exit = True

    async def _wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.state.active > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
