"""Admission by forecast: a waiting request starts only if the KV blocks of everyone
running, projected over their remaining steps, still fit once it runs too.

Without it a scheduler admits while blocks are free, the running requests then grow into
the cache, and it preempts the latest of them to make room: their whole prompts are computed
again. On W2 (1000 prompts of 512 tokens, 256 tokens out, 25k blocks) that recomputed 142k
tokens, 18% of the run's work (benchmarks/RESULTS.md, "Admission by forecast").

The forecast, in blocks: at step ``t`` from now, request ``r`` (``len_r`` tokens now, at
most ``rem_r`` more steps) holds ``cdiv(len_r + t, block_size)`` blocks while ``t < rem_r``
and none after it ends. Counting a request's prefix-cache hits once (they stay, shared, in
``base``) and bounding ``cdiv(x, b) <= (x + b - 1) / b`` (under a block too many):

    usage(t) <= base + sum over r with rem_r > t of (a_r + t / block_size),
    a_r = (len_r + block_size - 1) / block_size - shared_r

Its maximum over ``t`` is reached just before some request ends (``t = rem_r - 1``) or now:
sorted by ``rem`` (longest first), the ``k`` longest give ``sum(a) + t_k * k / block_size``.

``rem`` is exact for a request that can only end by length (no eos, stop ids, stop strings
or grammar): its remaining ``max_tokens``. Any other request may end at any step; it counts
the next ``OPEN_HORIZON`` tokens only, so a workload of short chat replies under a large
``max_tokens`` is not held back for tokens it will never generate. Preemption stays the
backstop for what the forecast does not see (a request that outgrows the horizon).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pagedllm.core.block_pool import KVCacheBlock
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request

# Tokens of growth counted for a request that may stop before its max_tokens. Chosen by
# simulating the scheduler (benchmarks/RESULTS.md, "Admission by forecast"): 16 was best or
# within 1% of it on every mix tried (0 and 64 came close); counting the whole max_tokens
# held chat mixes back by 20-50%.
OPEN_HORIZON = 16


def ends_by_length_only(request: Request) -> bool:
    """Whether only ``max_tokens`` (or ``max_model_len``) can end the request."""
    params = request.sampling_params
    return (
        (params.ignore_eos or request.eos_token_id is None)
        and not params.all_stop_token_ids
        and not params.stop
        and request.structured_output is None
    )


def remaining_steps(request: Request, max_model_len: int) -> int:
    """Steps the forecast counts for ``request``: its remaining tokens, or at most
    ``OPEN_HORIZON`` of them if it may stop earlier."""
    bound = request.length_bound
    if bound is None:  # fixed for the request's life: found once (this runs every step)
        end = min(len(request.prompt_token_ids) + request.max_tokens, max_model_len)
        bound = request.length_bound = (end, not ends_by_length_only(request))
    end, may_stop = bound
    left = end - len(request.all_token_ids)
    return max(min(left, OPEN_HORIZON) if may_stop else left, 0)


class BlockForecast:
    """The running requests' projected blocks, built once per step when someone waits;
    ``admits`` asks about one more request, ``add`` records it once admitted."""

    def __init__(self, running: Sequence[Request], kv: KVCacheManager, max_model_len: int):
        self.block_size = kv.block_size
        self.max_model_len = max_model_len
        self.capacity = kv.num_blocks
        bs = self.block_size
        # Runs once a step for every running request while some wait: lookups hoisted.
        hit_blocks, tables = kv.num_hit_blocks, kv.req_to_blocks
        num_tokens, shared, held, rem = [], [], [], []
        for request in running:
            num_tokens.append(len(request.all_token_ids))
            shared.append(hit_blocks.get(request.request_id, 0))
            held.append(len(tables.get(request.request_id, ())))
            rem.append(remaining_steps(request, max_model_len))
        own = sum(held) - sum(shared)  # blocks the running requests hold unshared
        self.base = kv.num_blocks - kv.block_pool.get_num_free_blocks() - own
        self.a = (np.array(num_tokens, dtype=np.float64) + (bs - 1)) / bs - np.array(shared)
        self.rem = np.array(rem, dtype=np.float64)
        # Everyone at their last step at once: when that fits, no sort is needed.
        self.worst = self.base + float(self.a.sum() + self.rem.sum() / bs)

    def terms(self, request: Request, hits: Sequence[KVCacheBlock]) -> tuple[float, int]:
        """A waiting request's ``(a, rem)``, before its prefix-cache ``hits`` on the device
        are taken: hits already in use are in ``base``; free cached ones become its own."""
        in_use = sum(1 for block in hits if block.ref_cnt > 0)
        a = (len(request.all_token_ids) + self.block_size - 1) / self.block_size - in_use
        return a, remaining_steps(request, self.max_model_len)

    def admits(self, terms: tuple[float, int]) -> bool:
        """Whether every projected step still fits with one more request of ``terms``."""
        a_new, rem_new = terms
        if self.worst + a_new + rem_new / self.block_size <= self.capacity:
            return True
        a = np.append(self.a, a_new)
        rem = np.append(self.rem, rem_new)
        order = np.argsort(-rem, kind="stable")
        counts = np.arange(1, len(a) + 1)
        last_step = np.maximum(rem[order] - 1, 0)
        steps = np.cumsum(a[order]) + last_step * counts / self.block_size
        return self.base + float(steps.max()) <= self.capacity

    def add(self, terms: tuple[float, int]) -> None:
        """Count an admitted request of ``terms`` in the forecast."""
        a_new, rem_new = terms
        self.a = np.append(self.a, a_new)
        self.rem = np.append(self.rem, rem_new)
        self.worst += a_new + rem_new / self.block_size
