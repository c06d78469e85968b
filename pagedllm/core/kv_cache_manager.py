"""Per-request block tables on top of the block pool, and prefix-cache lookups (on the
device, then in the host tier when ``swap_space`` gives one)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pagedllm.core.block_hash import update_block_hashes
from pagedllm.core.block_pool import BlockPool, KVCacheBlock
from pagedllm.core.host_tier import HostTier, StepCopies
from pagedllm.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class PrefixCacheStats:
    """Counters since the last ``take()``: tokens looked up and tokens found (on the device
    or in the host tier); of them, tokens looked up in the host tier (those past the device
    hits) and found there."""

    queries: int = 0
    hits: int = 0
    requests: int = 0
    host_queries: int = 0
    host_hits: int = 0

    def take(self) -> PrefixCacheStats:
        snapshot = dataclasses.replace(self)
        self.queries = self.hits = self.requests = self.host_queries = self.host_hits = 0
        return snapshot


@dataclass
class CachedPrefix:
    """A request's longest cached prefix of whole blocks: blocks on the device, then the
    host-tier slots of the blocks that follow them (copied back when it is admitted)."""

    device_blocks: list[KVCacheBlock] = field(default_factory=list)
    host_slots: list[int] = field(default_factory=list)
    # Blocks looked up in the host tier (every block past the device hits that may hit).
    num_host_queries: int = 0

    @property
    def num_blocks(self) -> int:
        return len(self.device_blocks) + len(self.host_slots)


class KVCacheManager:
    """Owns which blocks each request holds. Block ``i`` of a request holds the KV of its
    tokens ``[i * block_size, (i + 1) * block_size)``."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool,
        num_host_blocks: int = 0,
        save_ahead_blocks: int = 0,
    ) -> None:
        """``save_ahead_blocks``: see ``BlockPool``."""
        if num_host_blocks and not enable_caching:
            raise ValueError(
                "swap_space keeps prefix-cache blocks in host memory; it needs "
                "enable_prefix_caching."
            )
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.host_tier = HostTier(num_host_blocks) if num_host_blocks else None
        self.block_pool = BlockPool(num_blocks, enable_caching, self.host_tier, save_ahead_blocks)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # How many leading blocks of each request are registered in the hash map.
        self.num_cached_blocks: dict[str, int] = {}
        # How many leading blocks of each request were prefix-cache hits on the device when
        # it was admitted (possibly shared with others; the rest it took fresh).
        self.num_hit_blocks: dict[str, int] = {}
        # Host slots pinned for each swapped-out (preempted) request, until it runs again.
        self.host_pins: dict[str, list[int]] = {}
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    def usage(self) -> float:
        return self.block_pool.get_usage()

    def get_computed_blocks(self, request: Request) -> tuple[CachedPrefix, int]:
        """Longest cached prefix of whole blocks, and how many tokens it covers: blocks on
        the device, then blocks in the host tier (one run each: the device frees a
        request's blocks tail first, so its head is what stays on the device).

        At least the last token is always left to compute, so the step produces logits to
        sample from.
        """
        prefix = CachedPrefix()
        if not self.enable_caching or request.skip_prefix_cache:
            return prefix, 0
        hashes = update_block_hashes(request, self.block_size)
        max_blocks = (request.num_tokens - 1) // self.block_size
        for block_hash in hashes[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            prefix.device_blocks.append(block)
        if self.host_tier is not None:
            rest = hashes[len(prefix.device_blocks) : max_blocks]
            prefix.num_host_queries = len(rest)
            for block_hash in rest:
                slot = self.host_tier.lookup(block_hash)
                if slot is None:
                    break
                prefix.host_slots.append(slot)
        return prefix, prefix.num_blocks * self.block_size

    def pending_prompt_hashes(self, requests: Iterable[Request]) -> set[bytes]:
        """Hashes of the whole prompt blocks that ``requests`` (running) hold no registered
        block for yet: the chunks of their prompts a later step computes. A waiting request
        whose next uncached block is among them would compute it a second time."""
        pending: set[bytes] = set()
        if not self.enable_caching:
            return pending
        for request in requests:
            full = request.num_prompt_tokens // self.block_size
            start = self.num_cached_blocks.get(request.request_id, 0)
            if start < full and not request.skip_prefix_cache:
                pending.update(update_block_hashes(request, self.block_size)[start:full])
        return pending

    def first_missing_hash(self, request: Request, prefix: CachedPrefix) -> bytes | None:
        """The hash of the first block after ``prefix`` (the request's cached prefix) that it
        would compute, or None when only its last, partial block is left or the request
        does not use the cache. Call after ``get_computed_blocks`` (which hashes its blocks)."""
        index = prefix.num_blocks
        if not self.enable_caching or request.skip_prefix_cache:
            return None
        if index >= (request.num_tokens - 1) // self.block_size:
            return None
        return request.block_hashes[index]

    def record_lookup(self, num_tokens: int, num_hit_tokens: int, prefix: CachedPrefix) -> None:
        """Count one admitted request's prefix-cache lookup in the stats."""
        stats = self.prefix_cache_stats
        stats.requests += 1
        stats.queries += num_tokens
        stats.hits += num_hit_tokens
        stats.host_queries += prefix.num_host_queries * self.block_size
        stats.host_hits += len(prefix.host_slots) * self.block_size

    def allocate_slots(
        self, request: Request, num_new_tokens: int, prefix: CachedPrefix | None = None
    ) -> list[KVCacheBlock] | None:
        """Give the request room for ``num_new_tokens`` more tokens; None if blocks run out.

        ``prefix`` holds the prefix-cache hits found for a request being admitted: its device
        blocks are prepended to its (empty) block table, then fresh blocks that its host-tier
        hits are copied into (the first of the returned new blocks). Full blocks whose KV
        this step computes (or copies in) are registered in the hash map now: the copies run
        before the forward pass, and within it every layer writes its new K/V before any
        attention reads the cache, so a request scheduled later in the same step may
        already share them.
        """
        if prefix is None:  # a running request
            held = self.req_to_blocks.get(request.request_id, ())
            end = request.num_computed_tokens + num_new_tokens
            if end <= len(held) * self.block_size:  # the common decode step: room held
                # A decode fills a block once in block_size steps: register only then.
                full = min(end, len(request.all_token_ids)) // self.block_size
                if full > self.num_cached_blocks.get(request.request_id, 0):
                    self._maybe_cache(request, num_new_tokens)
                return []
            computed, host_slots = [], []
        else:
            computed, host_slots = prefix.device_blocks, prefix.host_slots
        needed = self._num_blocks_needed(request, num_new_tokens, computed, len(host_slots))
        if needed > self._available(computed):
            return None
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        if computed:
            self.block_pool.touch(computed)
            blocks.extend(computed)
            self.num_hit_blocks[request.request_id] = len(computed)
        if host_slots:
            new_blocks = self._take_loading(host_slots, max(needed, 0))
        else:
            new_blocks = self.block_pool.get_new_blocks(max(needed, 0))
        blocks.extend(new_blocks)
        hit_tokens = (len(computed) + len(host_slots)) * self.block_size
        self._maybe_cache(request, hit_tokens + num_new_tokens)
        self.release_swapped(request)  # it runs again: its swapped blocks are its own
        return new_blocks

    def swap_out(self, request: Request) -> int:
        """preemption_mode="swap": save a request being preempted in the host tier, its full
        blocks of computed tokens, pinned there until it is scheduled again or ends (the
        partial last block is recomputed). Returns the blocks saved; fewer than its full
        blocks when pinned slots fill the tier (the rest is recomputed)."""
        if self.host_tier is None or request.skip_prefix_cache:
            return 0
        blocks = self.req_to_blocks.get(request.request_id, [])
        num_full = min(request.num_computed_tokens, request.num_tokens) // self.block_size
        hashes = update_block_hashes(request, self.block_size)
        pins = self.host_pins.setdefault(request.request_id, [])
        for block, block_hash in zip(blocks[:num_full], hashes):
            slot = self.host_tier.save(block_hash, block.block_id)
            if slot is None:
                break
            self.host_tier.pin(slot)
            pins.append(slot)
        return len(pins)

    def take_copies(self) -> StepCopies:
        """This step's host-tier copies (``HostTier.take_copies``), with cached blocks
        saved ahead (``BlockPool.save_ahead``): once the step is scheduled, so none of them
        is a block the step takes."""
        if self.host_tier is None:
            return StepCopies()
        self.block_pool.save_ahead()
        return self.host_tier.take_copies()

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
        self.num_hit_blocks.pop(request.request_id, None)
        for block in blocks[request.num_computed_tokens // self.block_size :]:
            self.block_pool.evict_hash(block)
        self.block_pool.free_blocks(reversed(blocks))

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block, on the device and in the host tier. Refused (False)
        while a request holds blocks or a swapped-out request pins host slots."""
        if self.host_tier is not None and self.host_pins:
            return False
        if not self.block_pool.reset_prefix_cache():
            return False
        return self.host_tier is None or self.host_tier.reset()

    def host_usage(self) -> float:
        return self.host_tier.usage() if self.host_tier is not None else 0.0

    def check_integrity(self) -> None:
        """The pool's invariants, plus: each block's ref count is the number of block
        tables holding it, a block held by a request is never free, and the host tier's
        maps and pins are consistent."""
        self.block_pool.check_integrity()
        held = Counter(b.block_id for blocks in self.req_to_blocks.values() for b in blocks)
        for block in self.block_pool.blocks:
            assert block.ref_cnt == held[block.block_id], f"{block} held {held[block.block_id]}x"
        if self.host_tier is not None:
            self.host_tier.check_integrity()
            pins = Counter(s for slots in self.host_pins.values() for s in slots)
            assert pins == Counter(self.host_tier.pin_counts()), (
                "host pins differ from the requests'"
            )

    # -- helpers -------------------------------------------------------------------------

    def _take_loading(self, host_slots: list[int], needed: int) -> list[KVCacheBlock]:
        """``needed`` fresh blocks, the first ``len(host_slots)`` of them to be filled from
        those host-tier slots this step."""
        tier = self.host_tier
        assert tier is not None
        # Taking fresh blocks may save evicted ones to the tier: not into these slots.
        tier.lock(host_slots)
        new_blocks = self.block_pool.get_new_blocks(needed)
        for slot, block in zip(host_slots, new_blocks):
            tier.load(slot, block.block_id)
        return new_blocks

    def _num_blocks_needed(
        self, request: Request, num_new_tokens: int, computed: list[KVCacheBlock], num_host: int
    ) -> int:
        """Fresh blocks to take: the host-tier hits need theirs too."""
        held = len(self.req_to_blocks.get(request.request_id, ()))
        num_hits = len(computed) + num_host
        num_computed = request.num_computed_tokens + num_hits * self.block_size
        return cdiv(num_computed + num_new_tokens, self.block_size) - held - len(computed)

    def release_swapped(self, request: Request) -> None:
        """Unpin a swapped-out request's host slots: it runs again, or it ended."""
        pins = self.host_pins.pop(request.request_id, ())
        if pins:
            assert self.host_tier is not None  # only a tier's swap-outs pin
            for slot in pins:
                self.host_tier.unpin(slot)

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
