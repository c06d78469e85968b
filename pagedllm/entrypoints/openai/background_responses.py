"""Background responses (``background: true``): the run outlives its HTTP request.

A background create returns at once with the response ``queued``; the generation runs in a
task of the server's event loop. The store holds the response's current state (queued,
in_progress, then completed / incomplete / failed / cancelled), so ``GET`` shows progress
and ``POST .../cancel`` can stop the run (cancelling the task closes the chat stream, which
aborts the engine request). A streamed background run keeps its events, so a client can
read them as they come and later replay them from any sequence number
(``GET /v1/responses/{id}?stream=true&starting_after=N``).

Bounds: at most ``max_running`` runs queued or running (``--max-background-responses``;
503 with Retry-After past it: a run holds no connection, so nothing else bounds what one
client queues); a run's events are kept while it runs and, after it ends, for the last
``max_finished`` streamed runs only, and only while their events together hold at most
``max_finished_bytes`` (``--max-stored-response-bytes``, the oldest dropped first). Each
event that carries the response object (created, in_progress, completed or failed)
echoes the request's instructions and tools: a run of 20 MB instructions keeps 60 MB of
events after it ends, and 64 runs of 64 MB bodies, sent one after another on one
connection, could hold 12 GB that no bound counted.

A run belongs to the API key(s) that created it (``KeyOwner``): looked up with another
owner, it is not there, so another key can neither read, cancel nor forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pagedllm.engine.exceptions import EngineOverloadedError
from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.middleware import KeyOwner
from pagedllm.logger import init_logger

logger = init_logger(__name__)


@dataclass
class BackgroundRun:
    task: asyncio.Task[None] | None = None
    streamed: bool = False
    events: list[bytes] = field(default_factory=list)  # event i has sequence_number i
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    owner: KeyOwner = None  # the key(s) of the request that started it
    size: int = 0  # bytes of its events

    def add(self, event: bytes) -> None:
        self.events.append(event)
        self.size += len(event)
        self.changed.set()

    def end(self) -> None:
        self.ended = True
        self.changed.set()


class BackgroundRuns:
    """The background runs by response id. Used only from the event loop: no lock."""

    def __init__(
        self, max_running: int, max_finished: int = 64, max_finished_bytes: int = 256 << 20
    ) -> None:
        self.max_running = max_running
        self.max_finished = max_finished
        self.max_finished_bytes = max_finished_bytes
        self._running: dict[str, BackgroundRun] = {}
        self._finished: OrderedDict[str, BackgroundRun] = OrderedDict()
        self._finished_bytes = 0

    def check_room(self) -> None:
        """EngineOverloadedError (503) when ``max_running`` runs are queued or running."""
        if len(self._running) >= self.max_running:
            raise EngineOverloadedError(
                f"{len(self._running)} background responses are queued or running, the most "
                "this server runs at once (--max-background-responses); retry later, or "
                "send the request without background."
            )

    def start(
        self,
        response_id: str,
        work: Coroutine[Any, Any, None],
        streamed: bool,
        owner: KeyOwner = None,
    ) -> None:
        self.check_room()
        run = BackgroundRun(streamed=streamed, owner=owner)
        self._running[response_id] = run
        run.task = asyncio.create_task(self._guard(response_id, work), name=f"bg-{response_id}")

    def get(self, response_id: str, owner: KeyOwner = None) -> BackgroundRun | None:
        """The run of ``response_id`` if ``owner`` started it (another's is not found)."""
        run = self._running.get(response_id) or self._finished.get(response_id)
        return run if run is not None and run.owner == owner else None

    def is_running(self, response_id: str, owner: KeyOwner = None) -> bool:
        run = self._running.get(response_id)
        return run is not None and run.owner == owner

    async def cancel(self, response_id: str, owner: KeyOwner = None) -> None:
        """Stop ``owner``'s run of ``response_id`` (nothing when another owner started it)."""
        if not self.is_running(response_id, owner):
            return
        run = self._running[response_id]
        if run.task is None:
            return
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.task

    def forget(self, response_id: str, owner: KeyOwner = None) -> None:
        """Drop a finished run's kept events (its response was deleted by ``owner``)."""
        run = self._finished.get(response_id)
        if run is not None and run.owner == owner:
            self._drop_finished(response_id)

    def replay(
        self, response_id: str, starting_after: int | None, owner: KeyOwner = None
    ) -> AsyncIterator[bytes]:
        """``owner``'s streamed run's events after ``starting_after``, then each new one
        until it ends (checked now, so a wrong id is a 400 before any byte is sent). Leaving
        early (the reader hung up) does not touch the run."""
        run = self.get(response_id, owner)
        if run is None or not run.streamed:
            raise OpenAIError(
                f"Response '{response_id}' has no events kept: only streamed background "
                "responses can be streamed again (the last ones to finish are kept); "
                "retrieve it without stream.",
                400,
                "stream",
            )
        if starting_after is not None and starting_after < -1:
            raise OpenAIError("starting_after must be at least -1.", 400, "starting_after")
        return self._events(run, 0 if starting_after is None else starting_after + 1)

    @staticmethod
    async def _events(run: BackgroundRun, index: int) -> AsyncIterator[bytes]:
        while True:
            run.changed.clear()
            while index < len(run.events):
                yield run.events[index]
                index += 1
            if run.ended:
                return
            await run.changed.wait()

    def shutdown(self) -> None:
        """Cancel every run (the server is stopping; their engine requests are aborted)."""
        for run in self._running.values():
            if run.task is not None:
                run.task.cancel()

    async def _guard(self, response_id: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # the run's own handler records failures; this is a bug
            logger.exception("Background response %s failed", response_id)
        finally:
            run = self._running.pop(response_id)
            run.end()
            if run.streamed:
                self._keep_finished(response_id, run)

    def _keep_finished(self, response_id: str, run: BackgroundRun) -> None:
        """Keep an ended run's events, dropping the oldest kept past either bound (a run
        larger than ``max_finished_bytes`` alone is not kept: its readers have it whole)."""
        if run.size > self.max_finished_bytes:
            return
        self._finished[response_id] = run
        self._finished_bytes += run.size
        while len(self._finished) > self.max_finished or (
            self._finished_bytes > self.max_finished_bytes
        ):
            self._drop_finished(next(iter(self._finished)))

    def _drop_finished(self, response_id: str) -> None:
        self._finished_bytes -= self._finished.pop(response_id).size
