"""Fixed-size KV blocks: reference counts, an LRU free queue, and the prefix-cache hash map.

A block is in exactly one of three states:
- in use: ``ref_cnt > 0``; held by one or more requests; not in the free queue.
- free and cached: ``ref_cnt == 0`` with a ``block_hash``; in the free queue *and* in the
  hash map, so a later request with the same prefix can take it back.
- free: ``ref_cnt == 0``, no hash; in the free queue only.
New blocks are taken from the head of the free queue (least recently freed first); taking a
cached block evicts its hash, and with a host tier (``host_tier.py``) first saves the block
there under that hash, unless it was saved ahead: cached blocks not in the tier wait in
``unsaved`` (in the order their KV was computed) for ``save_ahead`` to save them while they
stay on the device, in use or free, off the path of the step that evicts them. A full
block's KV never changes until its hash is evicted, so a copy of it may run beside any
later step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from pagedllm.core.host_tier import HostTier


class KVCacheBlock:
    """Metadata of one block of the KV cache tensors; ``block_id`` indexes them."""

    __slots__ = ("block_hash", "block_id", "next_free", "prev_free", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: bytes | None = None
        # Links of the free queue; both None when the block is not in it.
        self.prev_free: KVCacheBlock | None = None
        self.next_free: KVCacheBlock | None = None

    def __repr__(self) -> str:
        cached = "" if self.block_hash is None else ", cached"
        return f"KVCacheBlock({self.block_id}, ref={self.ref_cnt}{cached})"


class FreeBlockQueue:
    """Doubly linked list of free blocks in eviction order, O(1) removal from the middle.

    Python's deque cannot remove from the middle in O(1); a request that takes back a cached
    block pulls it out wherever it sits, so the list is linked through the blocks themselves.
    """

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self._head = KVCacheBlock(-1)  # sentinels: head.next_free is the first free block
        self._tail = KVCacheBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free = 0
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVCacheBlock:
        block = self._head.next_free
        if block is self._tail or block is None:
            raise ValueError("No free blocks left.")
        self.remove(block)
        return block

    def remove(self, block: KVCacheBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, f"{block} is not in the free queue"
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def append(self, block: KVCacheBlock) -> None:
        last = self._tail.prev_free
        assert last is not None and block.prev_free is None and block.next_free is None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free += 1

    def __iter__(self) -> Iterator[KVCacheBlock]:
        block = self._head.next_free
        while block is not None and block is not self._tail:
            yield block
            block = block.next_free


class BlockPool:
    """All KV blocks of the engine, their reference counts and the prefix-cache map."""

    def __init__(
        self,
        num_blocks: int,
        enable_caching: bool,
        host_tier: HostTier | None = None,
        save_ahead_blocks: int = 0,
    ) -> None:
        """``save_ahead_blocks``: cached blocks saved to the host tier per step before they
        are evicted (``save_ahead``); 0 saves blocks only when evicted, and tracks none."""
        if num_blocks <= 0:
            raise ValueError(f"The KV cache needs at least one block, got {num_blocks}.")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.host_tier = host_tier
        self.save_ahead_blocks = save_ahead_blocks if host_tier is not None else 0
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.hash_to_block: dict[bytes, KVCacheBlock] = {}
        # With saves ahead: cached blocks whose hash the tier lacks, oldest first, each with
        # its KV computed by an earlier step (not every such block is here: a tier entry
        # evicted later leaves its device block to be saved on eviction). Blocks cached
        # this step (their KV is written by this step's forward pass) join at its end.
        self.unsaved: OrderedDict[int, KVCacheBlock] = OrderedDict()
        self._cached_this_step: list[tuple[KVCacheBlock, bytes]] = []

    # -- queries -------------------------------------------------------------------------

    def get_num_free_blocks(self) -> int:
        return self.free_queue.num_free

    def get_usage(self) -> float:
        """Fraction of blocks held by requests (cached free blocks count as free)."""
        return 1.0 - self.free_queue.num_free / self.num_blocks

    def get_cached_block(self, block_hash: bytes) -> KVCacheBlock | None:
        return self.hash_to_block.get(block_hash)

    # -- allocation ----------------------------------------------------------------------

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Take ``num_blocks`` blocks from the head of the free queue, evicting their hashes."""
        if num_blocks > self.free_queue.num_free:
            raise ValueError(
                f"Cannot take {num_blocks} blocks: only {self.free_queue.num_free} are free."
            )
        taken = []
        for _ in range(num_blocks):
            block = self.free_queue.popleft()
            if self.host_tier is not None and block.block_hash is not None:
                # A free cached block holds valid KV (``KVCacheManager.free`` drops the
                # hashes of blocks a step never filled): the swap-out runs before the
                # forward pass of the step that reuses the block.
                self.host_tier.save(block.block_hash, block.block_id)
            self.evict_hash(block)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def save_ahead(self) -> int:
        """Once a step is scheduled: save up to ``save_ahead_blocks`` of the oldest unsaved
        cached blocks to the host tier (copied beside the step: none of them is a block it
        takes or writes), then let the blocks it caches wait their turn. Returns how many
        were given a slot."""
        saved = 0
        while self.unsaved and saved < self.save_ahead_blocks:
            block_id, block = self.unsaved.popitem(last=False)
            assert self.host_tier is not None and block.block_hash is not None
            if self.host_tier.save(block.block_hash, block_id, ahead=True) is None:
                break  # every slot pinned or locked this step: saved on eviction instead
            saved += 1
        for block, block_hash in self._cached_this_step:
            if block.block_hash == block_hash:  # not evicted again within the step
                self.unsaved[block.block_id] = block
        self._cached_this_step.clear()
        return saved

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Add a reference to cached blocks a request reuses; pull free ones off the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference from each block; blocks that reach zero join the queue's tail.

        Callers pass a request's blocks last-first, so a prefix's tail is evicted before its
        head: the head is the part most likely to be shared again.
        """
        for block in ordered_blocks:
            assert block.ref_cnt > 0, f"double free of {block}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    # -- prefix cache --------------------------------------------------------------------

    def cache_block(self, block: KVCacheBlock, block_hash: bytes) -> None:
        """Register a full block under its hash (first writer wins; duplicates stay private)."""
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash in self.hash_to_block:
            return
        block.block_hash = block_hash
        self.hash_to_block[block_hash] = block
        tier = self.host_tier
        if self.save_ahead_blocks and tier is not None and tier.lookup(block_hash) is None:
            self._cached_this_step.append((block, block_hash))

    def evict_hash(self, block: KVCacheBlock) -> None:
        """Take the block out of the prefix cache (its KV is about to change, or never was)."""
        if block.block_hash is None:
            return
        self.unsaved.pop(block.block_id, None)
        if self.hash_to_block.get(block.block_hash) is block:
            del self.hash_to_block[block.block_hash]
        block.block_hash = None

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash. Refused (False) while any block is in use."""
        if self.free_queue.num_free != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.hash_to_block.clear()
        self.unsaved.clear()
        self._cached_this_step.clear()
        return True

    # -- invariants ----------------------------------------------------------------------

    def check_integrity(self) -> None:
        """Raise AssertionError unless free + in-use == total and the hash map is consistent."""
        queued = list(self.free_queue)
        queued_ids = {b.block_id for b in queued}
        assert len(queued_ids) == len(queued) == self.free_queue.num_free, "free queue corrupt"
        in_use = 0
        for block in self.blocks:
            assert block.ref_cnt >= 0, f"{block} has a negative ref count"
            if block.ref_cnt == 0:
                assert block.block_id in queued_ids, f"{block} is free but not queued"
            else:
                in_use += 1
                assert block.block_id not in queued_ids, f"{block} is in use but queued"
            if block.block_hash is not None:
                assert self.hash_to_block.get(block.block_hash) is block, f"{block} hash unmapped"
        for block_hash, block in self.hash_to_block.items():
            assert block.block_hash == block_hash, f"hash map points at {block} wrongly"
        assert in_use + len(queued) == self.num_blocks, "free + in use != total"
        for block_id, block in self.unsaved.items():
            assert block.block_id == block_id, f"{block} unsaved under {block_id}"
            assert block.block_hash is not None, f"{block} unsaved without a hash"
