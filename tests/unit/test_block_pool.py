"""FreeBlockQueue and BlockPool: queue order, reference counts, the hash map, integrity."""

from __future__ import annotations

import pytest

from pagedllm.core.block_hash import hash_block
from pagedllm.core.block_pool import BlockPool, FreeBlockQueue, KVCacheBlock


def ids(blocks) -> list[int]:
    return [b.block_id for b in blocks]


def h(tag: int) -> bytes:
    return hash_block(None, [tag], None)


# -- FreeBlockQueue ------------------------------------------------------------------------


def test_queue_popleft_takes_blocks_in_order():
    blocks = [KVCacheBlock(i) for i in range(4)]
    queue = FreeBlockQueue(blocks)
    assert queue.num_free == 4
    assert ids(queue) == [0, 1, 2, 3]
    assert queue.popleft() is blocks[0]
    assert queue.popleft() is blocks[1]
    assert queue.num_free == 2
    assert ids(queue) == [2, 3]


def test_queue_remove_from_middle_relinks_neighbours():
    blocks = [KVCacheBlock(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[2])
    assert ids(queue) == [0, 1, 3, 4]
    assert queue.num_free == 4
    assert blocks[2].prev_free is None and blocks[2].next_free is None
    assert blocks[1].next_free is blocks[3] and blocks[3].prev_free is blocks[1]
    queue.remove(blocks[0])  # head
    queue.remove(blocks[4])  # tail
    assert ids(queue) == [1, 3]
    assert queue.popleft() is blocks[1]


def test_queue_append_goes_to_tail():
    blocks = [KVCacheBlock(i) for i in range(3)]
    queue = FreeBlockQueue(blocks)
    first = queue.popleft()
    queue.append(first)
    assert ids(queue) == [1, 2, 0]
    assert queue.num_free == 3


def test_queue_refuses_bad_operations():
    block = KVCacheBlock(0)
    queue = FreeBlockQueue([block])
    with pytest.raises(AssertionError):
        queue.append(block)  # already queued
    queue.popleft()
    with pytest.raises(ValueError, match="No free blocks"):
        queue.popleft()
    with pytest.raises(AssertionError):
        queue.remove(block)  # not queued
    assert list(queue) == []


# -- BlockPool: allocation and reference counts ----------------------------------------------


def test_pool_rejects_empty():
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(0, enable_caching=True)


def test_get_new_blocks_takes_from_head_with_ref_one():
    pool = BlockPool(6, enable_caching=True)
    taken = pool.get_new_blocks(2)
    assert ids(taken) == [0, 1]
    assert all(b.ref_cnt == 1 for b in taken)
    assert pool.get_num_free_blocks() == 4
    assert pool.get_usage() == pytest.approx(2 / 6)
    pool.check_integrity()
    with pytest.raises(ValueError, match="only 4 are free"):
        pool.get_new_blocks(5)
    assert pool.get_num_free_blocks() == 4  # a refused request takes nothing
    pool.check_integrity()


def test_touch_and_free_count_references():
    pool = BlockPool(4, enable_caching=True)
    a, b = pool.get_new_blocks(2)
    pool.touch([a])  # a second request shares a
    assert a.ref_cnt == 2
    pool.free_blocks([a, b])
    assert (a.ref_cnt, b.ref_cnt) == (1, 0)
    assert ids(pool.free_queue) == [2, 3, 1]  # only b reached zero; it joins the tail
    pool.check_integrity()
    pool.free_blocks([a])
    assert ids(pool.free_queue) == [2, 3, 1, 0]
    with pytest.raises(AssertionError, match="double free"):
        pool.free_blocks([a])


def test_touch_pulls_free_cached_block_out_of_the_middle_of_the_queue():
    pool = BlockPool(5, enable_caching=True)
    blocks = pool.get_new_blocks(5)
    pool.cache_block(blocks[2], h(2))
    pool.free_blocks(blocks)
    assert ids(pool.free_queue) == [0, 1, 2, 3, 4]
    cached = pool.get_cached_block(h(2))
    assert cached is blocks[2]
    pool.touch([cached])
    assert cached.ref_cnt == 1
    assert ids(pool.free_queue) == [0, 1, 3, 4]
    assert pool.get_cached_block(h(2)) is cached  # still cached while in use
    pool.check_integrity()


def test_free_order_decides_eviction_order():
    pool = BlockPool(4, enable_caching=True)
    blocks = pool.get_new_blocks(4)
    pool.free_blocks(reversed(blocks))
    assert ids(pool.free_queue) == [3, 2, 1, 0]
    assert ids(pool.get_new_blocks(2)) == [3, 2]


# -- BlockPool: the prefix-cache hash map --------------------------------------------------


def test_get_new_blocks_evicts_hash_of_cached_free_block():
    pool = BlockPool(3, enable_caching=True)
    blocks = pool.get_new_blocks(3)
    for i, block in enumerate(blocks):
        pool.cache_block(block, h(i))
    pool.free_blocks(blocks)
    assert all(pool.get_cached_block(h(i)) is blocks[i] for i in range(3))
    assert pool.get_num_free_blocks() == 3  # cached free blocks count as free
    taken = pool.get_new_blocks(2)
    assert ids(taken) == [0, 1]
    assert all(b.block_hash is None for b in taken)
    assert pool.get_cached_block(h(0)) is None
    assert pool.get_cached_block(h(1)) is None
    assert pool.get_cached_block(h(2)) is blocks[2]
    pool.check_integrity()


def test_cache_block_first_writer_wins():
    pool = BlockPool(3, enable_caching=True)
    first, second, _ = pool.get_new_blocks(3)
    pool.cache_block(first, h(7))
    pool.cache_block(second, h(7))  # an identical block computed twice stays private
    assert pool.get_cached_block(h(7)) is first
    assert second.block_hash is None
    pool.cache_block(first, h(8))  # a block keeps the hash it was registered under
    assert first.block_hash == h(7)
    assert pool.get_cached_block(h(8)) is None
    pool.check_integrity()


def test_evict_hash_leaves_another_blocks_mapping_alone():
    pool = BlockPool(3, enable_caching=True)
    first, second, _ = pool.get_new_blocks(3)
    pool.cache_block(first, h(1))
    second.block_hash = h(1)  # a private duplicate carrying the same hash
    pool.evict_hash(second)
    assert second.block_hash is None
    assert pool.get_cached_block(h(1)) is first
    pool.evict_hash(first)
    assert pool.get_cached_block(h(1)) is None and first.block_hash is None
    pool.evict_hash(first)  # nothing cached: a no-op
    pool.check_integrity()


def test_cache_block_is_a_no_op_without_caching():
    pool = BlockPool(2, enable_caching=False)
    (block,) = pool.get_new_blocks(1)
    pool.cache_block(block, h(1))
    assert block.block_hash is None
    assert pool.get_cached_block(h(1)) is None


def test_reset_prefix_cache_refused_while_blocks_in_use():
    pool = BlockPool(3, enable_caching=True)
    blocks = pool.get_new_blocks(2)
    pool.cache_block(blocks[0], h(0))
    assert pool.reset_prefix_cache() is False
    assert pool.get_cached_block(h(0)) is blocks[0]
    pool.free_blocks(blocks)
    assert pool.reset_prefix_cache() is True
    assert pool.get_cached_block(h(0)) is None
    assert all(b.block_hash is None for b in pool.blocks)
    pool.check_integrity()


# -- check_integrity catches corruption ----------------------------------------------------


def test_check_integrity_catches_ref_count_of_free_block():
    pool = BlockPool(4, enable_caching=True)
    pool.check_integrity()
    pool.blocks[2].ref_cnt = 1  # claims to be in use while sitting in the free queue
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_check_integrity_catches_in_use_block_with_zero_refs():
    pool = BlockPool(4, enable_caching=True)
    (block,) = pool.get_new_blocks(1)
    block.ref_cnt = 0  # leaked: neither held nor free
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_check_integrity_catches_negative_ref_count():
    pool = BlockPool(2, enable_caching=True)
    (block,) = pool.get_new_blocks(1)
    block.ref_cnt = -1
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_check_integrity_catches_free_count_drift():
    pool = BlockPool(4, enable_caching=True)
    pool.free_queue.num_free += 1
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_check_integrity_catches_inconsistent_hash_map():
    pool = BlockPool(4, enable_caching=True)
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, h(1))
    pool.check_integrity()
    pool.hash_to_block[h(1)] = b  # the map points at a block registered under nothing
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_check_integrity_catches_unmapped_block_hash():
    pool = BlockPool(4, enable_caching=True)
    (a,) = pool.get_new_blocks(1)
    a.block_hash = h(3)  # a hash the map does not know
    with pytest.raises(AssertionError):
        pool.check_integrity()
