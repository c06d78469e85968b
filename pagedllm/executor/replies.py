"""Reading every rank's answer to one call, the same for every executor: the values in
rank order; a failure of every rank alike raised as is (the step's own, or a start-up
error); ranks that disagree end the engine."""

from __future__ import annotations

import pickle
from typing import Any

from pagedllm.executor.errors import WorkerDiedError
from pagedllm.executor.messages import Reply


def values_in_rank_order(replies: dict[int, Reply], world_size: int) -> list[Any]:
    """``replies`` holds one reply per rank (0 .. world_size - 1)."""
    failed = {rank: r.value for rank, r in replies.items() if not r.ok}
    if not failed:
        return [replies[rank].value for rank in range(world_size)]
    first = failed[min(failed)]
    if len(failed) == world_size:
        raise first  # every rank alike: the step's own failure (or a start-up error)
    fine = sorted(set(replies) - set(failed))
    raise WorkerDiedError(
        f"Worker rank(s) {sorted(failed)} failed ({type(first).__name__}: {first}) while "
        f"rank(s) {fine} did not: the ranks are out of step and the engine stops."
    )


def portable(reply: Reply) -> Reply:
    """The reply as it can cross to the executor: an exception that does not pickle
    travels as a RuntimeError of its text."""
    if reply.ok:
        return reply
    try:
        pickle.dumps(reply.value)
    except Exception:
        error = RuntimeError(f"{type(reply.value).__name__}: {reply.value}")
        return Reply(reply.seq, reply.rank, False, error)
    return reply
