"""Per-request block tables on top of the block pool, and prefix-cache lookups."""

from __future__ import annotations

from dataclasses import dataclass

from pagedllm.core.block_hash import update_block_hashes
from pagedllm.core.block_pool import BlockPool, KVCacheBlock
from pagedllm.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class PrefixCacheStats:
    """Counters since the last ``take()``: tokens looked up and tokens found."""

    queries: int = 0
    hits: int = 0
    requests: int = 0

    def take(self) -> PrefixCacheStats:
        snapshot = PrefixCacheStats(self.queries, self.hits, self.requests)
        self.queries = self.hits = self.requests = 0
        return snapshot


class KVCacheManager:
    """Owns which blocks each request holds. Block ``i`` of a request holds the KV of its
    tokens ``[i * block_size, (i + 1) * block_size)``."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # How many leading blocks of each request are registered in the hash map.
        self.num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    def usage(self) -> float:
        return self.block_pool.get_usage()

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of whole blocks, and how many tokens it covers.

        At least the last token is always left to compute, so the step produces logits to
        sample from.
        """
        if not self.enable_caching or request.skip_prefix_cache:
            return [], 0
        hashes = update_block_hashes(request, self.block_size)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in hashes[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def record_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count one admitted request's prefix-cache lookup in the stats."""
        stats = self.prefix_cache_stats
        stats.requests += 1
        stats.queries += num_tokens
        stats.hits += num_hit_tokens

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
    ) -> list[KVCacheBlock] | None:
        """Give the request room for ``num_new_tokens`` more tokens; None if blocks run out.

        ``new_computed_blocks`` are prefix-cache hits found for a request being admitted; they
        are prepended to its (empty) block table. Full blocks whose KV this step computes are
        registered in the hash map now: within one forward pass every layer writes its new
        K/V before any attention reads the cache, so a request scheduled later in the same
        step may already share them.
        """
        computed = new_computed_blocks or []
        needed = self._num_blocks_needed(request, num_new_tokens, computed)
        if needed <= 0 and not computed:  # the common decode step: room already held
            self._maybe_cache(request, num_new_tokens)
            return []
        if needed > self._available(computed):
            return None
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        if computed:
            self.block_pool.touch(computed)
            blocks.extend(computed)
        new_blocks = self.block_pool.get_new_blocks(max(needed, 0))
        blocks.extend(new_blocks)
        self._maybe_cache(request, len(computed) * self.block_size + num_new_tokens)
        return new_blocks

    def _maybe_cache(self, request: Request, num_new_tokens: int) -> None:
        """Register the blocks that the tokens computed this step fill up."""
        if self.enable_caching and not request.skip_prefix_cache:
            end = min(request.num_computed_tokens + num_new_tokens, request.num_tokens)
            self._cache_full_blocks(request, end // self.block_size)

    def free(self, request: Request) -> None:
        """Release a request's blocks, tail first (see ``BlockPool.free_blocks``).

        Only blocks inside ``num_computed_tokens`` may stay cached. ``allocate_slots`` hashes
        the blocks a step will fill before the step runs; a request preempted after it was
        scheduled in the same step never runs that step, so those blocks hold no valid KV.
        """
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_blocks.pop(request.request_id, None)
        for block in blocks[request.num_computed_tokens // self.block_size :]:
            self.block_pool.evict_hash(block)
        self.block_pool.free_blocks(reversed(blocks))

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def reset_prefix_cache(self) -> bool:
        return self.block_pool.reset_prefix_cache()

    # -- helpers -------------------------------------------------------------------------

    def _num_blocks_needed(
        self, request: Request, num_new_tokens: int, computed: list[KVCacheBlock]
    ) -> int:
        held = len(self.req_to_blocks.get(request.request_id, ()))
        num_computed = request.num_computed_tokens + len(computed) * self.block_size
        return cdiv(num_computed + num_new_tokens, self.block_size) - held - len(computed)

    def _available(self, computed: list[KVCacheBlock]) -> int:
        # Reusing a free cached block takes it off the free queue, so it cannot double as a
        # fresh block for the same request.
        reclaimed = sum(1 for b in computed if b.ref_cnt == 0)
        return self.block_pool.get_num_free_blocks() - reclaimed

    def _cache_full_blocks(self, request: Request, num_full_blocks: int) -> None:
        start = self.num_cached_blocks.get(request.request_id, 0)
        if num_full_blocks <= start:
            return
        hashes = update_block_hashes(request, self.block_size)
        blocks = self.req_to_blocks[request.request_id]
        for i in range(start, num_full_blocks):
            self.block_pool.cache_block(blocks[i], hashes[i])
        self.num_cached_blocks[request.request_id] = num_full_blocks
