"""Errors of the executor that end the engine (not one request's fault)."""

from __future__ import annotations


class WorkerDiedError(RuntimeError):
    """A worker process died, stopped answering, or the ranks fell out of step: a step
    needs every rank, so nothing can run any more and the engine core stops."""

    engine_fatal = True
