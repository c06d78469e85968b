"""KVCacheManager: block math, running out, freeing, prefix-cache lookups and accounting.

The tests play the scheduler's part by hand: allocate, then mark the tokens computed.
"""

from __future__ import annotations

from pagedllm.core.block_hash import hash_block, update_block_hashes
from pagedllm.core.kv_cache_manager import CachedPrefix, KVCacheManager
from pagedllm.core.request import Request
from tests.unit.core_helpers import make_request

BS = 4


def ids(blocks) -> list[int]:
    return [b.block_id for b in blocks]


def compute(kv: KVCacheManager, request: Request, num_tokens: int, hits=None) -> list[int]:
    """Allocate for ``num_tokens`` more tokens and mark them computed; return new block ids."""
    prefix = hits if isinstance(hits, CachedPrefix) else CachedPrefix(list(hits or []))
    new = kv.allocate_slots(request, num_tokens, prefix)
    assert new is not None
    request.num_computed_tokens += prefix.num_blocks * BS + num_tokens
    kv.check_integrity()
    return ids(new)


def admit(kv: KVCacheManager, request: Request) -> int:
    """Admit a request the way the scheduler does: prefix hits, then the rest of its tokens."""
    hits, num_hit_tokens = kv.get_computed_blocks(request)
    compute(kv, request, request.num_tokens - num_hit_tokens, hits)
    return num_hit_tokens


def decode(request: Request, token: int) -> None:
    request.append_output_token_ids([token])


# -- block math --------------------------------------------------------------------------


def test_allocate_slots_block_math_across_boundaries():
    kv = KVCacheManager(16, BS, enable_caching=False)
    req = make_request("a", list(range(10)), max_tokens=20)
    assert compute(kv, req, 10) == [0, 1, 2]  # 10 tokens -> 3 blocks, last one half full
    decode(req, 100)  # token 10: still in block 2
    assert compute(kv, req, 1) == []
    decode(req, 101)  # token 11: fills block 2
    assert compute(kv, req, 1) == []
    decode(req, 102)  # token 12: first token of block 3
    assert compute(kv, req, 1) == [3]
    assert kv.get_block_ids("a") == [0, 1, 2, 3]
    assert kv.block_pool.get_num_free_blocks() == 12


def test_allocate_slots_in_chunks():
    kv = KVCacheManager(16, BS, enable_caching=False)
    req = make_request("a", list(range(13)))
    assert compute(kv, req, 3) == [0]  # [0, 3)
    assert compute(kv, req, 1) == []  # [3, 4) fills block 0 exactly
    assert compute(kv, req, 5) == [1, 2]  # [4, 9)
    assert compute(kv, req, 4) == [3]  # [9, 13)
    assert len(kv.get_block_ids("a")) == 4


def test_allocate_slots_returns_none_and_takes_nothing_when_out_of_blocks():
    kv = KVCacheManager(4, BS, enable_caching=True)
    first = make_request("a", list(range(10)))
    compute(kv, first, 10)  # 3 of 4 blocks
    second = make_request("b", list(range(50, 58)))  # needs 2 blocks, 1 is free
    assert kv.allocate_slots(second, 8) is None
    assert kv.block_pool.get_num_free_blocks() == 1
    assert kv.get_block_ids("b") == []
    assert "b" not in kv.num_cached_blocks
    assert kv.allocate_slots(second, 4) is not None  # one block still fits
    assert kv.block_pool.get_num_free_blocks() == 0
    kv.block_pool.check_integrity()


def test_free_returns_blocks_tail_first():
    kv = KVCacheManager(6, BS, enable_caching=False)
    other = make_request("x", list(range(4)))
    compute(kv, other, 4)  # block 0
    req = make_request("a", list(range(12)))
    compute(kv, req, 12)  # blocks 1, 2, 3
    kv.free(req)
    # Blocks 4 and 5 were never used; then the request's blocks, its tail first.
    assert ids(kv.block_pool.free_queue) == [4, 5, 3, 2, 1]
    assert kv.get_block_ids("a") == []
    kv.free(req)  # freeing twice is harmless: nothing is held any more
    assert kv.block_pool.get_num_free_blocks() == 5
    kv.block_pool.check_integrity()


def test_free_uncaches_blocks_past_the_computed_tokens():
    # allocate_slots hashes the blocks a step will fill before the step runs; if the request
    # is freed before that step (preempted after being scheduled), they hold no valid KV.
    kv = KVCacheManager(8, BS, enable_caching=True)
    req = make_request("a", list(range(13)))
    compute(kv, req, 4)  # [0, 4) computed
    assert kv.allocate_slots(req, 8) is not None  # [4, 12) scheduled, never run
    hashes = update_block_hashes(req, BS)
    assert all(kv.block_pool.get_cached_block(h) is not None for h in hashes[:3])
    kv.free(req)
    assert kv.block_pool.get_cached_block(hashes[0]) is not None
    assert kv.block_pool.get_cached_block(hashes[1]) is None
    assert kv.block_pool.get_cached_block(hashes[2]) is None
    kv.block_pool.check_integrity()
    _, num_hit_tokens = kv.get_computed_blocks(make_request("b", list(range(13))))
    assert num_hit_tokens == 4


# -- prefix caching ----------------------------------------------------------------------


def test_second_request_hits_whole_blocks_of_the_same_prefix():
    kv = KVCacheManager(16, BS, enable_caching=True)
    prompt = list(range(10))
    first = make_request("a", prompt)
    assert admit(kv, first) == 0
    second = make_request("b", prompt)
    hits, num_hit_tokens = kv.get_computed_blocks(second)
    assert num_hit_tokens == 8  # two whole blocks; the half block is not shared
    assert hits.device_blocks == kv.req_to_blocks["a"][:2]
    compute(kv, second, 2, hits)
    assert kv.get_block_ids("b")[:2] == kv.get_block_ids("a")[:2]
    assert kv.get_block_ids("b")[2] != kv.get_block_ids("a")[2]
    assert [b.ref_cnt for b in kv.req_to_blocks["a"]] == [2, 2, 1]


def test_prefix_hit_stops_at_first_differing_block():
    kv = KVCacheManager(16, BS, enable_caching=True)
    admit(kv, make_request("a", list(range(12))))
    diverged = list(range(6)) + [99] * 6  # same first block, differs inside the second
    _, num_hit_tokens = kv.get_computed_blocks(make_request("b", diverged))
    assert num_hit_tokens == 4
    # A later equal block does not count after a miss: hashes chain through the parent.
    later = [99, 99, 99, 99, *range(4, 12)]
    _, num_hit_tokens = kv.get_computed_blocks(make_request("c", later))
    assert num_hit_tokens == 0


def test_prefix_hit_never_covers_the_last_prompt_token():
    kv = KVCacheManager(16, BS, enable_caching=True)
    admit(kv, make_request("a", list(range(12))))
    _, num_hit_tokens = kv.get_computed_blocks(make_request("b", list(range(8))))
    assert num_hit_tokens == 4  # block 1 is cached but holds the last token
    _, num_hit_tokens = kv.get_computed_blocks(make_request("c", list(range(9))))
    assert num_hit_tokens == 8


def test_hashes_are_registered_only_for_full_blocks():
    kv = KVCacheManager(16, BS, enable_caching=True)
    req = make_request("a", list(range(6)))
    compute(kv, req, 6)
    blocks = kv.req_to_blocks["a"]
    assert blocks[0].block_hash is not None
    assert blocks[1].block_hash is None  # half full
    decode(req, 100)
    decode(req, 101)  # token 7 fills block 1; its KV is computed by the next allocation
    compute(kv, req, 2)
    assert blocks[1].block_hash == update_block_hashes(req, BS)[1]
    assert kv.num_cached_blocks["a"] == 2


def test_cache_salt_separates_caches():
    kv = KVCacheManager(16, BS, enable_caching=True)
    prompt = list(range(9))
    admit(kv, make_request("a", prompt, cache_salt="alice"))
    _, unsalted = kv.get_computed_blocks(make_request("b", prompt))
    _, other_salt = kv.get_computed_blocks(make_request("c", prompt, cache_salt="bob"))
    _, same_salt = kv.get_computed_blocks(make_request("d", prompt, cache_salt="alice"))
    assert (unsalted, other_salt, same_salt) == (0, 0, 8)
    # The salt enters the first hash and the chain carries it on.
    assert hash_block(None, prompt[:4], "alice") != hash_block(None, prompt[:4], None)


def test_no_hits_without_caching_or_with_prompt_logprobs():
    kv = KVCacheManager(16, BS, enable_caching=False)
    admit(kv, make_request("a", list(range(9))))
    assert kv.get_computed_blocks(make_request("b", list(range(9))))[1] == 0
    assert all(b.block_hash is None for b in kv.block_pool.blocks)

    kv = KVCacheManager(16, BS, enable_caching=True)
    admit(kv, make_request("a", list(range(9))))
    wants_logprobs = make_request("b", list(range(9)), prompt_logprobs=1)
    assert kv.get_computed_blocks(wants_logprobs) == (CachedPrefix(), 0)


def test_freed_blocks_stay_cached_until_reused():
    kv = KVCacheManager(8, BS, enable_caching=True)
    first = make_request("a", list(range(9)))
    admit(kv, first)
    first_blocks = list(kv.req_to_blocks["a"])
    kv.free(first)
    assert kv.block_pool.get_num_free_blocks() == 8
    second = make_request("b", list(range(9)))
    assert admit(kv, second) == 8
    assert kv.req_to_blocks["b"][:2] == first_blocks[:2]
    assert [b.ref_cnt for b in first_blocks[:2]] == [1, 1]


def test_hits_on_free_cached_blocks_reduce_available_count():
    kv = KVCacheManager(4, BS, enable_caching=True)
    first = make_request("a", list(range(9)))
    admit(kv, first)  # 3 blocks, 2 of them full and cached
    kv.free(first)
    assert kv.block_pool.get_num_free_blocks() == 4

    # 17 tokens: 2 cached blocks + 3 fresh ones = 5 > 4, though 4 blocks are "free".
    too_long = make_request("b", list(range(8)) + [50] * 9)
    hits, num_hit_tokens = kv.get_computed_blocks(too_long)
    assert num_hit_tokens == 8
    assert kv.allocate_slots(too_long, 9, hits) is None
    assert all(b.ref_cnt == 0 for b in hits.device_blocks)  # refused: nothing was touched
    assert kv.block_pool.get_num_free_blocks() == 4
    assert all(kv.block_pool.get_cached_block(b.block_hash) is b for b in hits.device_blocks)
    kv.block_pool.check_integrity()

    # 16 tokens: 2 cached + 2 fresh = 4 fits exactly.
    fits = make_request("c", list(range(8)) + [50] * 8)
    hits, num_hit_tokens = kv.get_computed_blocks(fits)
    new = kv.allocate_slots(fits, 8, hits)
    assert new is not None and len(new) == 2
    assert kv.req_to_blocks["c"][:2] == hits.device_blocks
    assert kv.block_pool.get_num_free_blocks() == 0
    kv.block_pool.check_integrity()


def test_shared_block_outlives_one_holder():
    kv = KVCacheManager(8, BS, enable_caching=True)
    first, second = make_request("a", list(range(9))), make_request("b", list(range(9)))
    admit(kv, first)
    admit(kv, second)
    shared = kv.req_to_blocks["a"][0]
    assert shared.ref_cnt == 2
    kv.free(first)
    assert shared.ref_cnt == 1
    assert shared.block_id not in ids(kv.block_pool.free_queue)
    kv.free(second)
    assert kv.block_pool.get_num_free_blocks() == 8
    kv.block_pool.check_integrity()


def test_reset_prefix_cache_only_when_idle():
    kv = KVCacheManager(8, BS, enable_caching=True)
    req = make_request("a", list(range(9)))
    admit(kv, req)
    assert kv.reset_prefix_cache() is False
    kv.free(req)
    assert kv.reset_prefix_cache() is True
    assert kv.get_computed_blocks(make_request("b", list(range(9))))[1] == 0


def test_prefix_cache_stats_take_resets():
    kv = KVCacheManager(8, BS, enable_caching=True)
    kv.record_lookup(10, 8, CachedPrefix())
    kv.record_lookup(6, 0, CachedPrefix())
    stats = kv.prefix_cache_stats.take()
    assert (stats.requests, stats.queries, stats.hits) == (2, 16, 8)
    again = kv.prefix_cache_stats.take()
    assert (again.requests, again.queries, again.hits) == (0, 0, 0)
