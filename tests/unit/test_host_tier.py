"""The host tier of the prefix cache (swap_space), torch-free: its LRU bookkeeping, and the
scheduler's copies checked on the fake runner's simulated KV (a swap-in that brings back
another prefix's KV, or a copy in the wrong order, fails the runner's read check)."""

from __future__ import annotations

import logging
import random

import pytest

from pagedllm.config import CacheConfig
from pagedllm.core.host_tier import HostTier, StepCopies
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import RequestStatus
from pagedllm.metrics import stats
from pagedllm.metrics.prometheus import PrometheusStatLogger
from pagedllm.metrics.stats import EngineSnapshot, IterationStats, LoggingStatLogger
from tests.unit.core_helpers import Harness, expected_output, make_request, make_scheduler

# -- HostTier ----------------------------------------------------------------------------


def test_lru_eviction_and_one_copy_per_saved_hash():
    tier = HostTier(2)
    assert tier.save(b"a", 10) == 0 and tier.save(b"b", 11) == 1
    assert tier.save(b"a", 12) == 0  # already here: made recent, no second copy
    assert tier.take_copies() == StepCopies(swap_out=[(10, 0), (11, 1)])
    assert tier.save(b"c", 13) == 1  # b is the least recent
    assert tier.lookup(b"b") is None and tier.lookup(b"a") == 0
    assert tier.take_copies() == StepCopies(swap_out=[(13, 1)])
    tier.check_integrity()


def test_locked_and_pinned_slots_are_not_reused():
    tier = HostTier(2)
    tier.save(b"a", 1)
    tier.save(b"b", 2)
    tier.take_copies()
    tier.load(0, 7)  # a is read this step: locked
    tier.pin(1)  # b belongs to a swapped-out request
    assert tier.save(b"c", 3) is None  # nothing may be evicted: c is dropped
    assert tier.take_copies() == StepCopies(swap_in=[(0, 7)])
    assert tier.save(b"c", 3) == 0  # the lock ended with the step; b stays pinned
    assert tier.lookup(b"b") == 1
    assert tier.reset() is False  # a pin (and a pending copy) refuse a reset
    tier.take_copies()
    tier.unpin(1)
    assert tier.reset() is True and tier.num_used == 0
    tier.check_integrity()


def test_a_slot_reused_within_a_step_is_copied_once():
    tier = HostTier(1)
    tier.save(b"a", 5)
    tier.save(b"b", 6)  # evicts a, same slot, same step: only b's copy is left
    assert tier.take_copies() == StepCopies(swap_out=[(6, 0)])
    assert tier.lookup(b"a") is None and tier.lookup(b"b") == 0


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least one block"):
        HostTier(0)
    with pytest.raises(ValueError, match="needs enable_prefix_caching"):
        KVCacheManager(8, 4, enable_caching=False, num_host_blocks=8)


# -- the scheduler with a host tier ------------------------------------------------------


def computed_tokens(harness: Harness) -> int:
    return sum(so.total_num_scheduled_tokens for so in harness.history)


def run_rounds(num_host_blocks: int, rounds: int = 3, save_ahead_blocks: int = 0) -> Harness:
    """Six 20-token prompts (5 blocks each), asked again each round, one at a time, with a
    device cache of 12 blocks: by the time a prompt comes back, the device has reused its
    blocks for the others."""
    harness = Harness(make_scheduler(num_blocks=12, max_num_seqs=1, num_host_blocks=num_host_blocks,
                                     save_ahead_blocks=save_ahead_blocks))  # fmt: skip
    prompts = {f"p{i}": [100 * i + t for t in range(20)] for i in range(6)}
    for round_ in range(rounds):
        for name, prompt in prompts.items():
            rid = f"{name}-{round_}"
            harness.add(make_request(rid, prompt, max_tokens=3))
            harness.run()
            assert harness.outputs[rid] == expected_output(rid, 20, 3)
    harness.assert_all_blocks_free()
    return harness


def test_evicted_prefixes_come_back_from_the_host_tier():
    with_tier, without = run_rounds(num_host_blocks=64), run_rounds(num_host_blocks=0)
    tier = with_tier.scheduler.kv.host_tier
    assert tier is not None and tier.num_saved > 0 and tier.num_loaded > 0
    assert with_tier.runner.num_swapped_in == tier.num_loaded
    # Rounds 2 and 3 compute only each prompt's last block (4 of 20 tokens, + decodes).
    assert computed_tokens(without) == 3 * 6 * (20 + 2)
    assert computed_tokens(with_tier) == 6 * (20 + 2) + 2 * 6 * (4 + 2)


def test_blocks_saved_ahead_need_no_copy_when_evicted():
    """With two blocks saved ahead a step, free cached blocks reach the tier while they
    are still on the device (checked by the fake runner's reads when they come back), and
    evictions copy fewer: the same tokens, the same compute."""
    ahead, plain = run_rounds(64, save_ahead_blocks=2), run_rounds(64)
    assert ahead.runner.num_saved_ahead > 0
    swap_outs = [sum(len(so.kv_swap_out) for so in h.history) for h in (ahead, plain)]
    assert swap_outs[0] < swap_outs[1]
    assert computed_tokens(ahead) == computed_tokens(plain)
    assert ahead.outputs == plain.outputs


def test_save_ahead_takes_blocks_cached_in_earlier_steps_oldest_first():
    kv = KVCacheManager(8, 4, enable_caching=True, num_host_blocks=8, save_ahead_blocks=2)
    pool = kv.block_pool
    blocks = pool.get_new_blocks(5)
    for i, block in enumerate(blocks):
        pool.cache_block(block, bytes([i]))
    pool.evict_hash(blocks[4])  # dropped within its step (a request preempted before it ran)
    # This step writes their KV: none is saved ahead before the next step.
    assert kv.take_copies().save_ahead == []
    assert list(pool.unsaved) == [b.block_id for b in blocks[:4]]
    # In use or free, a block cached earlier is saved ahead, the oldest first.
    pool.free_blocks([blocks[0]])
    copies = kv.take_copies()
    assert copies.save_ahead == [(blocks[0].block_id, 0), (blocks[1].block_id, 1)]
    assert copies.swap_out == [] and list(pool.unsaved) == [b.block_id for b in blocks[2:4]]
    # Evicting a block saved ahead copies nothing; an unsaved one is saved on eviction.
    pool.free_blocks(blocks[1:])
    pool.get_new_blocks(8)
    copies = kv.take_copies()
    assert sorted(copies.swap_out) == [(blocks[2].block_id, 2), (blocks[3].block_id, 3)]
    assert copies.save_ahead == [] and not pool.unsaved
    pool.check_integrity()
    kv.host_tier.check_integrity()


def test_a_full_tier_evicts_its_least_recent_blocks():
    # 24 host + 12 device blocks for 30 prompt blocks a round: the tier fills up, evicts,
    # and still serves most of each round.
    harness = run_rounds(num_host_blocks=24)
    tier = harness.scheduler.kv.host_tier
    assert tier is not None and tier.num_used == 24 and tier.num_saved > 24
    assert tier.num_loaded > 0
    assert computed_tokens(harness) < 3 * 6 * (20 + 2)


def test_hits_on_device_then_host_within_one_step():
    """Requests sharing a prefix admitted in one step: the first copies it in, the others
    share the copied-in blocks (registered before the forward pass reads them)."""
    harness = Harness(make_scheduler(num_blocks=20, max_num_seqs=4, max_num_batched_tokens=64,
                                     num_host_blocks=32))  # fmt: skip
    shared = list(range(500, 516))
    harness.add(make_request("first", [*shared, 1, 2, 3], max_tokens=2))
    harness.run()
    harness.add(make_request("flush", 60, max_tokens=16))  # reuses every cached block
    harness.run()
    harness.add(*(make_request(f"s{i}", [*shared, 9, i], max_tokens=2) for i in range(3)))
    so, _ = harness.step()
    # The flush took the shared prefix's blocks tail first: its first block is still on the
    # device, the other three come back from the tier, once.
    assert len(so.kv_swap_in) == 3
    tables = [harness.scheduler.kv.get_block_ids(f"s{i}")[:4] for i in range(3)]
    assert tables[0] == tables[1] == tables[2]
    harness.run()
    for i in range(3):
        assert harness.outputs[f"s{i}"] == expected_output(f"s{i}", 18, 2)
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_with_the_tier_gives_the_same_tokens(mode):
    jobs = [(f"r{i}", 8 + 2 * i, 16) for i in range(6)]  # each fits the 10 blocks alone
    harness = Harness(make_scheduler(num_blocks=10, max_num_seqs=6, max_num_batched_tokens=24,
                                     num_host_blocks=64, preemption_mode=mode))  # fmt: skip
    harness.add(*(make_request(rid, n, max_tokens=m) for rid, n, m in jobs))
    harness.run()
    assert harness.scheduler.num_preemptions > 0
    assert harness.outputs == {rid: expected_output(rid, n, m) for rid, n, m in jobs}
    assert harness.scheduler.kv.host_tier.num_loaded > 0
    assert not harness.scheduler.kv.host_pins  # every pin released
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_swap_preemption_pins_the_victims_blocks_until_it_runs():
    harness = Harness(make_scheduler(num_blocks=6, max_num_seqs=2, num_host_blocks=3,
                                     preemption_mode="swap"))  # fmt: skip
    first, second = make_request("a", 8, max_tokens=8), make_request("b", 8, max_tokens=8)
    harness.add(first, second)
    while not harness.history or not harness.history[-1].preempted_req_ids:
        harness.step()
    assert second.status == RequestStatus.PREEMPTED
    kv = harness.scheduler.kv
    pinned = kv.host_pins["b"]
    # Its full blocks of computed tokens (all but its last sampled token were computed),
    # which fill the tier: while it waits, nothing else can be saved.
    assert len(pinned) == (second.num_tokens - 1) // 4 == 3
    assert {slot for _, slot in harness.history[-1].kv_swap_out} >= set(pinned)
    harness.add(make_request("c", 14, max_tokens=2))  # churns the device cache
    harness.run()
    assert harness.outputs["b"] == expected_output("b", 8, 8)
    assert harness.outputs["c"] == expected_output("c", 14, 2)
    assert not kv.host_pins
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_abort_of_a_swapped_out_request_releases_its_pins():
    harness = Harness(make_scheduler(num_blocks=6, max_num_seqs=2, num_host_blocks=8,
                                     preemption_mode="swap"))  # fmt: skip
    harness.add(make_request("a", 8, max_tokens=8), make_request("b", 8, max_tokens=8))
    while not harness.history or not harness.history[-1].preempted_req_ids:
        harness.step()
    assert harness.scheduler.kv.host_pins
    harness.scheduler.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    assert not harness.scheduler.kv.host_pins
    harness.run()
    harness.assert_all_blocks_free()
    assert harness.scheduler.reset_prefix_cache()
    assert harness.scheduler.kv.host_tier.num_used == 0


@pytest.mark.parametrize("ahead", [0, 3])
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_churn_with_a_small_tier(mode, ahead):
    """Random prompts over shared prefixes, aborts, preemptions, with and without saves
    ahead; every step's reads checked by the fake runner and every invariant by the
    harness."""
    rng = random.Random(7)
    harness = Harness(make_scheduler(num_blocks=16, max_num_seqs=6, max_num_batched_tokens=24,
                                     num_host_blocks=12, preemption_mode=mode,
                                     save_ahead_blocks=ahead))  # fmt: skip
    prefixes = [[rng.randrange(3, 900) for _ in range(rng.randint(4, 30))] for _ in range(5)]
    submitted = 0
    while submitted < 300 or harness.scheduler.has_unfinished_requests():
        for _ in range(min(rng.randint(0, 3), 300 - submitted)):
            prompt = [*rng.choice(prefixes)[: rng.randint(1, 30)], rng.randrange(3, 900)]
            harness.add(make_request(f"q{submitted}", prompt, max_tokens=rng.randint(1, 12)))
            submitted += 1
        if rng.random() < 0.05 and harness.scheduler.requests:
            victim = rng.choice(sorted(harness.scheduler.requests))
            harness.scheduler.finish_requests([victim], RequestStatus.FINISHED_ABORTED)
        harness.step()
    harness.assert_all_blocks_free()
    assert harness.scheduler.kv.host_tier.num_loaded > 0
    assert not harness.scheduler.kv.host_pins
    assert (harness.runner.num_saved_ahead > 0) == (ahead > 0)


def test_stats_line_and_metrics_show_the_tier():
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    stats.logger.addHandler(handler)
    try:
        line_logger = LoggingStatLogger()
        line_logger.interval = 0
        snapshot = EngineSnapshot(1, 0, 0.5, 64, 48, 0, True, 0.25, 32, 16)
        line_logger.record(IterationStats(step_seconds=0.01), snapshot)
    finally:
        stats.logger.removeHandler(handler)
    assert "CPU KV cache usage: 25.0%, CPU prefix cache hit rate: 50.0%" in lines[-1]
    prometheus = PrometheusStatLogger("m", 512, CacheConfig(16, True, 0.9, 1 << 20))
    prometheus.record(IterationStats(step_seconds=0.01), snapshot)
    text = prometheus.exposition().decode()
    assert 'pagedllm:cpu_prefix_cache_hits_total{engine="0",model_name="m"} 16.0' in text
    assert 'pagedllm:cpu_prefix_cache_queries_total{engine="0",model_name="m"} 32.0' in text
    assert 'pagedllm:cpu_cache_usage_perc{engine="0",model_name="m"} 0.25' in text
