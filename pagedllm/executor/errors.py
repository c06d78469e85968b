"""Errors that end the engine (not one request's fault)."""

from __future__ import annotations


class EngineFatalError(RuntimeError):
    """A failure that leaves the engine's state unknown or unusable for every request: the
    engine core stops instead of looking for a request to blame. It pickles as its message
    (the cause is not carried), so it keeps its class across the executor's processes."""


class WorkerDiedError(EngineFatalError):
    """A worker process died, stopped answering, or the ranks fell out of step: a step
    needs every rank, so nothing can run any more and the engine core stops."""


class HostTierError(EngineFatalError):
    """A copy to or from the host KV tier failed: which blocks hold what is no longer known
    to the scheduler."""
