"""The scheduler driven by a fake runner: chunking, budgets, preemption, priorities, aborts,
stop conditions, and randomized runs that must finish with every block back in the pool.

Every step goes through ``Harness.step``: the fake runner checks the step's limits and the
simulated KV of every scheduled request, and the block pool's integrity is checked after it.
"""

from __future__ import annotations

import gc
import random

import pytest

from pagedllm.core.request import ErrorCause, FinishReason, RequestStatus
from pagedllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.core.stopping import check_stop
from tests.unit.core_helpers import (
    EOS,
    Harness,
    expected_output,
    fake_token,
    make_request,
    make_scheduler,
)


def scheduled(so) -> dict[str, int]:
    return dict(so.num_scheduled_tokens)


def new_ids(so) -> list[str]:
    return [r.req_id for r in so.scheduled_new_reqs]


def assert_ran_to_length(harness: Harness, requests) -> None:
    for request in requests:
        rid = request.request_id
        assert harness.outputs[rid] == expected_output(
            rid, request.num_prompt_tokens, request.max_tokens
        )
        assert harness.finish_reasons[rid] == FinishReason.LENGTH


# -- admission and bookkeeping ---------------------------------------------------------------


def test_duplicate_request_id_is_refused():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4))
    with pytest.raises(ValueError, match="already"):
        scheduler.add_request(make_request("a", 4))


def test_the_core_times_go_with_a_requests_first_output_only():
    harness = Harness(make_scheduler())
    request = make_request("a", 6, max_tokens=3)
    harness.add(request)
    _, first = harness.step()
    assert first[0].queued_time == request.queued_time
    assert first[0].scheduled_time == request.scheduled_time is not None
    _, second = harness.step()
    assert second[0].new_token_ids and second[0].queued_time is None
    assert second[0].scheduled_time is None
    failed = make_request("b", 6, max_tokens=3)
    harness.add(failed)
    harness.step()
    error = harness.scheduler.fail_request(failed, "boom")
    assert error.queued_time is None  # its first output was sent already
    unscheduled = make_request("c", 6)
    harness.scheduler.add_request(unscheduled)
    error = harness.scheduler.fail_request(unscheduled, "boom")
    assert error.queued_time == unscheduled.queued_time and error.scheduled_time is None


def test_single_request_runs_to_its_length_cap():
    harness = Harness(make_scheduler())
    request = make_request("a", 6, max_tokens=5)
    harness.add(request)
    so, _ = harness.step()
    assert new_ids(so) == ["a"] and scheduled(so) == {"a": 6}
    assert so.scheduled_new_reqs[0].num_computed_tokens == 0
    steps = 1 + harness.run()
    assert steps == 5  # one prefill step, then one decode step per further token
    assert_ran_to_length(harness, [request])
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert harness.scheduler.schedule().finished_req_ids == {"a"}
    harness.assert_all_blocks_free()


def test_empty_schedule_when_idle():
    scheduler = make_scheduler()
    so = scheduler.schedule()
    assert so.is_empty and not so.scheduled_new_reqs and not so.scheduled_cached_reqs


def test_a_decode_step_tracks_no_object_per_request_for_the_collector():
    """A step in flight lives through the garbage collector's young passes; objects made
    per request (a record per request, a list of no new blocks) promoted with it made full
    collections (~19 ms at 1,024 requests) come every ~30 steps (RESULTS "The scheduler's
    per-step objects")."""
    harness = Harness(make_scheduler(num_blocks=512, max_num_seqs=64, max_num_batched_tokens=512))
    for i in range(64):
        harness.add(make_request(f"r{i}", 5, max_tokens=20))
    harness.step()  # the prompts; every request decodes from here on
    gc.collect()
    before = len(gc.get_objects())
    so = harness.scheduler.schedule()
    made = len(gc.get_objects()) - before
    assert len(so.scheduled_cached_reqs) == 64 and so.total_num_scheduled_tokens == 64
    assert made < 16, f"{made} tracked objects for one step of 64 decodes"
    assert all(not gc.is_tracked(c) for c in so.scheduled_cached_reqs)


# -- chunked prefill and the token budget ----------------------------------------------------


def test_chunked_prefill_alongside_decodes():
    harness = Harness(make_scheduler(max_num_batched_tokens=16, max_num_seqs=4))
    a, b = make_request("a", 4, max_tokens=20), make_request("b", 4, max_tokens=20)
    harness.add(a, b)
    harness.step()  # both prefills: both decoding from now on
    long = make_request("c", 40, max_tokens=3)
    harness.add(long)
    chunks = []
    for _ in range(3):
        so, outs = harness.step()
        assert scheduled(so)["a"] == scheduled(so)["b"] == 1  # decodes keep going
        chunks.append(scheduled(so)["c"])
        # The prompt takes what the decodes leave of the budget, until it runs out.
        assert so.total_num_scheduled_tokens == min(16, 2 + 40 - sum(chunks[:-1]))
        sampled_c = [o for o in outs if o.request_id == "c"]
        if len(chunks) < 3:
            assert not sampled_c, "a prompt chunk short of the end samples nothing"
    assert chunks == [14, 14, 12]
    assert sampled_c and sampled_c[0].new_token_ids == [fake_token("c", 40)]
    # The runner was told the prompt once, then only progress.
    assert [new_ids(so) for so in harness.history[1:4]] == [["c"], [], []]
    progress = [
        r.num_computed_tokens
        for so in harness.history[2:4]
        for r in so.scheduled_cached_reqs
        if r.req_id == "c"
    ]
    assert progress == [14, 28]
    harness.run()
    assert_ran_to_length(harness, [a, b, long])
    harness.assert_all_blocks_free()


def test_long_prefill_token_threshold_caps_chunks():
    harness = Harness(make_scheduler(max_num_batched_tokens=32, long_prefill_token_threshold=8))
    request = make_request("a", 20, max_tokens=2)
    harness.add(request)
    chunks = [scheduled(harness.step()[0])["a"] for _ in range(3)]
    assert chunks == [8, 8, 4]
    harness.run()
    assert_ran_to_length(harness, [request])
    harness.assert_all_blocks_free()


def test_budget_and_max_num_seqs_are_never_exceeded():
    rng = random.Random(1)
    harness = Harness(make_scheduler(num_blocks=256, max_num_seqs=3, max_num_batched_tokens=10))
    requests = [
        make_request(f"r{i}", rng.randint(1, 25), max_tokens=rng.randint(1, 8)) for i in range(20)
    ]
    harness.add(*requests)
    harness.run()  # the fake runner asserts both limits on every step
    totals = [so.total_num_scheduled_tokens for so in harness.history]
    widths = [len(so.num_scheduled_tokens) for so in harness.history]
    assert max(totals) == 10 and max(widths) == 3  # both limits were actually reached
    assert_ran_to_length(harness, requests)
    harness.assert_all_blocks_free()


def test_without_chunked_prefill_a_prompt_waits_for_the_whole_budget():
    harness = Harness(
        make_scheduler(max_num_batched_tokens=16, max_num_seqs=4, enable_chunked_prefill=False)
    )
    first = make_request("a", 4, max_tokens=6)
    harness.add(first)
    harness.step()
    big, small = make_request("b", 16, max_tokens=2), make_request("c", 2, max_tokens=2)
    harness.add(big, small)
    while not first.is_finished:
        so, _ = harness.step()
        # 16 prompt tokens never fit beside a decode; the request behind waits its turn.
        assert set(scheduled(so)) == {"a"}
    so, _ = harness.step()
    assert scheduled(so) == {"b": 16}  # whole, in one step
    harness.run()
    assert_ran_to_length(harness, [first, big, small])
    harness.assert_all_blocks_free()


def test_with_chunked_prefill_the_same_prompt_starts_at_once():
    harness = Harness(make_scheduler(max_num_batched_tokens=16, max_num_seqs=4))
    harness.add(make_request("a", 4, max_tokens=6))
    harness.step()
    harness.add(make_request("b", 16, max_tokens=2))
    so, _ = harness.step()
    assert scheduled(so) == {"a": 1, "b": 15}


# -- prefix caching through the scheduler ----------------------------------------------------


def test_prefix_hit_skips_cached_tokens():
    harness = Harness(make_scheduler())
    prompt = list(range(100, 110))
    harness.add(make_request("a", prompt, max_tokens=2))
    harness.run()
    second = make_request("b", prompt, max_tokens=2)
    harness.add(second)
    so, outs = harness.step()
    assert so.scheduled_new_reqs[0].num_computed_tokens == 8
    assert scheduled(so) == {"b": 2}
    assert outs[0].num_cached_tokens == 8
    assert second.num_cached_tokens == 8
    harness.run()
    assert_ran_to_length(harness, [second])
    stats = harness.scheduler.kv.prefix_cache_stats.take()
    assert (stats.requests, stats.queries, stats.hits) == (2, 20, 8)
    harness.assert_all_blocks_free()


def test_same_step_admission_shares_blocks_computed_in_that_step():
    harness = Harness(make_scheduler(max_num_batched_tokens=64))
    prompt = list(range(100, 109))
    first, second = make_request("a", prompt), make_request("b", prompt)
    harness.add(first, second)
    so, _ = harness.step()  # the runner checks the second reads what the first writes
    assert scheduled(so) == {"a": 9, "b": 1}
    kv = harness.scheduler.kv
    assert kv.get_block_ids("a")[:2] == kv.get_block_ids("b")[:2]
    harness.run()
    assert_ran_to_length(harness, [first, second])
    harness.assert_all_blocks_free()


def test_a_twin_waits_for_the_chunks_its_twin_computes_then_hits_them():
    """Two requests with one 40-token prompt, chunks capped at 16 tokens: the second waits
    at the head of the queue while the first's chunks are scheduled (an unrelated request
    behind it is admitted meanwhile), then starts from the first's cached blocks: 4 prompt
    tokens computed instead of 40."""
    harness = Harness(make_scheduler(max_num_batched_tokens=64, long_prefill_token_threshold=16))
    prompt = list(range(100, 140))
    first, twin = make_request("a", prompt), make_request("b", prompt)
    other = make_request("c", 24)
    harness.add(first, twin, other)
    steps = []
    while "b" not in (step := scheduled(harness.step()[0])):
        steps.append(step)
    assert steps == [{"a": 16, "c": 16}, {"a": 16, "c": 8}]
    assert step == {"a": 8, "b": 4, "c": 1}  # a's last chunk, and b after it
    assert twin.num_cached_tokens == 36
    late = make_request("d", prompt)  # the prompt is cached now: no wait
    harness.add(late)
    assert scheduled(harness.step()[0])["d"] == 4
    harness.run()
    assert_ran_to_length(harness, [first, twin, other, late])
    harness.assert_all_blocks_free()


def test_requests_without_a_cache_hit_cost_no_twin_lookup(monkeypatch):
    """Distinct prompts (W2's) never hit: the running requests' pending chunks are not
    collected for them, step after step."""
    harness = Harness(make_scheduler(max_num_batched_tokens=64, long_prefill_token_threshold=16))
    kv, calls = harness.scheduler.kv, []
    real = kv.pending_prompt_hashes
    monkeypatch.setattr(kv, "pending_prompt_hashes", lambda rs: calls.append(1) or real(rs))
    harness.add(*(make_request(f"r{i}", 40) for i in range(6)))
    harness.run()
    assert not calls


def test_without_the_prefix_cache_twins_do_not_wait():
    harness = Harness(
        make_scheduler(max_num_batched_tokens=64, long_prefill_token_threshold=16,
                       enable_caching=False)
    )  # fmt: skip
    prompt = list(range(100, 140))
    harness.add(make_request("a", prompt), make_request("b", prompt))
    assert scheduled(harness.step()[0]) == {"a": 16, "b": 16}


# -- preemption ------------------------------------------------------------------------------


@pytest.mark.usefixtures("admit_freely")
def test_preempted_request_recomputes_and_keeps_its_tokens():
    # 4 blocks of 4 tokens; A and B need 3 blocks each at their longest. C waits for a seat.
    harness = Harness(make_scheduler(num_blocks=4, max_num_seqs=2, enable_caching=False))
    first, second = make_request("a", 4, max_tokens=8), make_request("b", 4, max_tokens=8)
    third = make_request("c", 4, max_tokens=2)
    harness.add(first, second, third)
    while not harness.history or not harness.history[-1].preempted_req_ids:
        harness.step()
    so = harness.history[-1]
    assert so.preempted_req_ids == {"b"}  # the latest request, not the one that needed room
    assert scheduled(so) == {"a": 1}
    assert second.status == RequestStatus.PREEMPTED
    assert second.num_computed_tokens == 0
    assert second.num_preemptions == 1 and harness.scheduler.num_preemptions == 1
    kept = list(second.output_token_ids)
    assert kept == expected_output("b", 4, len(kept)) and kept
    assert list(harness.scheduler.waiting) == [second, third]  # back at the head of the line
    assert harness.scheduler.kv.get_block_ids("b") == []

    while "b" not in scheduled(harness.step()[0]):
        assert "c" not in scheduled(harness.history[-1]), "C jumped ahead of preempted B"
    so = harness.history[-1]
    (resumed,) = so.scheduled_cached_reqs
    assert resumed.req_id == "b" and resumed.resumed_from_preemption
    assert resumed.num_computed_tokens == 0
    assert scheduled(so)["b"] == 4 + len(kept)  # prompt and generated tokens recomputed
    assert resumed.new_block_ids == harness.scheduler.kv.get_block_ids("b")
    harness.run()
    assert_ran_to_length(harness, [first, second, third])
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_no_admission_in_a_step_that_preempted():
    # Same squeeze as above under the priority policy, with an urgent small request C that
    # arrives just before A's growth preempts B: C fits, but that step admits nobody.
    harness = Harness(make_scheduler(num_blocks=4, policy="priority", enable_caching=False))
    harness.add(make_request("a", 4, max_tokens=8, priority=1))
    harness.add(make_request("b", 4, max_tokens=8, priority=1))
    for _ in range(5):
        assert not harness.step()[0].preempted_req_ids
    harness.add(make_request("c", 1, max_tokens=1, priority=0))
    so, _ = harness.step()
    assert so.preempted_req_ids == {"b"}
    assert scheduled(so) == {"a": 1}
    assert harness.scheduler.kv.block_pool.get_num_free_blocks() == 1  # room C could use
    so, _ = harness.step()
    assert scheduled(so) == {"a": 1, "c": 1}
    harness.run()
    harness.assert_all_blocks_free()


def workload(seed: int, count: int, max_total: int) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        prompt_len = rng.randint(1, max_total - 1)
        jobs.append((f"r{i}", prompt_len, rng.randint(1, max_total - prompt_len)))
    return jobs


def run_workload(jobs, num_blocks: int, **kwargs) -> Harness:
    """Run every job to completion (fcfs); check each preemption took the latest requests."""
    harness = Harness(make_scheduler(num_blocks=num_blocks, **kwargs))
    harness.add(*(make_request(rid, n, max_tokens=m) for rid, n, m in jobs))
    for _ in range(5_000):
        if not harness.scheduler.has_unfinished_requests():
            break
        running_before = [r.request_id for r in harness.scheduler.running]
        victims = harness.step()[0].preempted_req_ids
        # Victims come off the back of the running list: the latest admitted first.
        assert victims == set(running_before[len(running_before) - len(victims) :])
    assert not harness.scheduler.has_unfinished_requests(), "no progress: deadlock"
    harness.assert_all_blocks_free()
    return harness


@pytest.mark.usefixtures("admit_freely")
@pytest.mark.parametrize("enable_caching", [False, True])
def test_preemption_gives_the_same_tokens_as_plenty_of_blocks(enable_caching):
    jobs = workload(seed=3, count=12, max_total=24)
    kwargs = dict(max_num_seqs=6, max_num_batched_tokens=24, enable_caching=enable_caching)
    tight = run_workload(jobs, num_blocks=7, **kwargs)
    roomy = run_workload(jobs, num_blocks=200, **kwargs)
    assert tight.scheduler.num_preemptions > 0
    assert roomy.scheduler.num_preemptions == 0
    assert tight.outputs == roomy.outputs
    assert tight.finish_reasons == roomy.finish_reasons
    assert tight.outputs == {rid: expected_output(rid, n, m) for rid, n, m in jobs}
    resumed = {
        r.req_id
        for so in tight.history
        for r in so.scheduled_cached_reqs
        if r.resumed_from_preemption
    }
    preempted = set().union(*(so.preempted_req_ids for so in tight.history))
    assert resumed == preempted


# -- priority policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("priority", ["p1", "p2a", "p2b", "p3"]), ("fcfs", ["p3", "p1", "p2a", "p2b"])],
)
def test_admission_order(policy, expected):
    harness = Harness(make_scheduler(max_num_seqs=1, policy=policy))
    for rid, priority in [("p3", 3), ("p1", 1), ("p2a", 2), ("p2b", 2)]:
        harness.add(make_request(rid, 3, max_tokens=2, priority=priority))
    harness.run()
    order = [rid for so in harness.history for rid in new_ids(so)]
    assert order == expected
    harness.assert_all_blocks_free()


def priority_preemption_scenario(
    policy: str, low: int = 5, mid: int = 2
) -> tuple[Harness, SchedulerOutput]:
    """Running in admission order: L (priority ``low``), H (0), M (``mid``), X (1), with X
    still in prefill. In the returned step L and H have just taken the last free blocks when
    M needs its second one."""
    harness = Harness(
        make_scheduler(
            num_blocks=7,
            max_num_seqs=4,
            max_num_batched_tokens=8,
            policy=policy,
            enable_caching=False,
        )
    )
    harness.add(make_request("l", 3, max_tokens=10, priority=low))
    harness.step()
    harness.add(make_request("h", 4, max_tokens=10, priority=0))
    harness.add(make_request("m", 3, max_tokens=10, priority=mid))
    harness.step()
    harness.add(make_request("x", 12, max_tokens=10, priority=1))
    assert scheduled(harness.step()[0])["x"] == 5  # what the three decodes leave
    assert [r.request_id for r in harness.scheduler.running] == ["l", "h", "m", "x"]
    so, _ = harness.step()
    return harness, so


@pytest.mark.usefixtures("admit_freely")
def test_priority_preempts_the_highest_value_even_if_already_scheduled():
    harness, so = priority_preemption_scenario("priority")
    # L was scheduled first in this step, then dropped to make room for M; its token goes
    # back to the budget, and X, after M in the running list, still gets its chunk.
    assert so.preempted_req_ids == {"l"}
    assert scheduled(so) == {"h": 1, "m": 1, "x": 6}
    assert so.total_num_scheduled_tokens == 8
    assert [c.req_id for c in so.scheduled_cached_reqs] == ["h", "m", "x"]
    low = harness.scheduler.waiting.peek()
    assert low.request_id == "l" and low.status == RequestStatus.PREEMPTED
    harness.run()
    for rid, prompt_len in [("l", 3), ("h", 4), ("m", 3), ("x", 12)]:
        assert harness.outputs[rid] == expected_output(rid, prompt_len, 10)
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_fcfs_preempts_the_latest_in_the_same_situation():
    harness, so = priority_preemption_scenario("fcfs")
    assert so.preempted_req_ids == {"x"}
    assert scheduled(so) == {"l": 1, "h": 1, "m": 1}
    harness.run()
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_priority_ties_preempt_the_latest_arrival():
    # L and M share the worst priority; M arrived later, so M goes (it preempts itself).
    harness, so = priority_preemption_scenario("priority", low=5, mid=5)
    assert so.preempted_req_ids == {"m"}
    assert scheduled(so) == {"l": 1, "h": 1, "x": 6}
    harness.run()
    harness.assert_all_blocks_free()


def test_priority_queue_orders_equal_priorities_by_arrival_time():
    harness = Harness(make_scheduler(max_num_seqs=1, policy="priority"))
    harness.add(make_request("late", 3, max_tokens=1, arrival_time=20.0))
    harness.add(make_request("early", 3, max_tokens=1, arrival_time=10.0))
    harness.add(make_request("urgent", 3, max_tokens=1, arrival_time=30.0, priority=-1))
    harness.run()
    assert [rid for so in harness.history for rid in new_ids(so)] == ["urgent", "early", "late"]
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_dropping_a_scheduled_victim_uncaches_blocks_it_never_computed():
    """A victim already scheduled this step registered the blocks its chunk would fill;
    the chunk never runs, so those blocks must not stay in the prefix cache."""
    harness = Harness(
        make_scheduler(
            num_blocks=7,
            policy="priority",
            max_num_batched_tokens=16,
            long_prefill_token_threshold=8,
        )
    )
    low = make_request("l", 24, max_tokens=2, priority=5)
    harness.add(low)
    harness.step()  # L computes [0, 8)
    harness.add(make_request("h", 4, max_tokens=3, priority=0))
    harness.step()  # L computes [8, 16), H its prompt
    so, _ = harness.step()  # L is given [16, 24), then dropped so H can decode
    assert so.preempted_req_ids == {"l"} and "l" not in scheduled(so)
    pool = harness.scheduler.kv.block_pool
    hashes = low.block_hashes
    assert all(pool.get_cached_block(h) is not None for h in hashes[:4])  # computed: kept
    assert all(pool.get_cached_block(h) is None for h in hashes[4:6])  # never computed
    harness.run()  # L resumes; the fake runner checks every position it attends to
    assert harness.outputs["l"] == expected_output("l", 24, 2)
    harness.assert_all_blocks_free()


# -- aborts ----------------------------------------------------------------------------------


def test_abort_running_and_waiting_requests():
    harness = Harness(make_scheduler(num_blocks=16, max_num_seqs=2))
    a, b, c = (make_request(rid, 6, max_tokens=10) for rid in "abc")
    harness.add(a, b, c)
    harness.step()
    assert [r.request_id for r in harness.scheduler.running] == ["a", "b"]
    assert harness.scheduler.kv.block_pool.get_num_free_blocks() == 12
    finished = harness.scheduler.finish_requests(
        ["a", "c", "unknown"], RequestStatus.FINISHED_ABORTED
    )
    assert [r.request_id for r in finished] == ["a", "c"]
    assert a.status == c.status == RequestStatus.FINISHED_ABORTED
    assert a.status.finish_reason == FinishReason.ABORT
    assert harness.scheduler.kv.block_pool.get_num_free_blocks() == 14  # a's 2 blocks back
    assert harness.scheduler.get_num_unfinished_requests() == 1
    harness.scheduler.kv.block_pool.check_integrity()
    so, _ = harness.step()
    assert so.finished_req_ids == {"a", "c"}
    assert set(scheduled(so)) == {"b"}
    assert harness.scheduler.finish_requests(["a"], RequestStatus.FINISHED_ABORTED) == []
    so, _ = harness.step()
    assert so.finished_req_ids == set()
    harness.scheduler.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    assert not harness.scheduler.has_unfinished_requests()
    assert harness.scheduler.schedule().finished_req_ids == {"b"}
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_abort_preempted_request():
    harness = Harness(make_scheduler(num_blocks=4, enable_caching=False))
    harness.add(make_request("a", 4, max_tokens=8), make_request("b", 4, max_tokens=8))
    while not harness.history or not harness.history[-1].preempted_req_ids:
        harness.step()
    harness.scheduler.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    assert len(harness.scheduler.waiting) == 0
    harness.run()
    assert harness.finish_reasons == {"a": FinishReason.LENGTH}
    harness.assert_all_blocks_free()


def test_abort_between_schedule_and_update_drops_the_sampled_token():
    harness = Harness(make_scheduler())
    harness.add(make_request("a", 4, max_tokens=4))
    so = harness.scheduler.schedule()
    out = harness.runner.execute(so)
    harness.scheduler.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert harness.scheduler.update_from_output(so, out) == []
    harness.assert_all_blocks_free()


# -- stop conditions -------------------------------------------------------------------------


def sample(request, *tokens: int, max_model_len: int = 1000) -> list[bool]:
    """Append tokens one by one, returning check_stop's answer after each."""
    results = []
    for token in tokens:
        request.append_output_token_ids([token])
        results.append(check_stop(request, max_model_len))
    return results


def test_check_stop_on_eos():
    request = make_request("a", 3, max_tokens=10)
    assert sample(request, 7, 8, EOS) == [False, False, True]
    assert request.status == RequestStatus.FINISHED_STOPPED
    assert request.status.finish_reason == FinishReason.STOP
    assert request.stop_reason is None


def test_check_stop_on_stop_token_id_records_it():
    request = make_request("a", 3, max_tokens=10, stop_token_ids=[42, 43])
    assert sample(request, 7, 43) == [False, True]
    assert request.status == RequestStatus.FINISHED_STOPPED
    assert request.stop_reason == 43


def test_check_stop_uses_all_stop_token_ids():
    request = make_request("a", 3, max_tokens=10)
    request.sampling_params.all_stop_token_ids.add(77)  # as the engine does for extra eos ids
    assert sample(request, 76, 77) == [False, True]
    assert request.stop_reason == 77


def test_check_stop_at_max_tokens_and_max_model_len():
    request = make_request("a", 3, max_tokens=3)
    assert sample(request, 7, 8, 9) == [False, False, True]
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert request.status.finish_reason == FinishReason.LENGTH
    request = make_request("b", 3, max_tokens=100)
    assert sample(request, 7, 8, max_model_len=5) == [False, True]
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_length_cap_wins_over_eos_on_the_same_token():
    request = make_request("a", 3, max_tokens=2)
    assert sample(request, 7, EOS) == [False, True]
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_min_tokens_holds_back_eos_and_stop_ids_but_not_length():
    request = make_request("a", 3, max_tokens=10, min_tokens=3, stop_token_ids=[42])
    assert sample(request, EOS, 42, EOS) == [False, False, True]
    assert request.status == RequestStatus.FINISHED_STOPPED
    request = make_request("b", 3, max_tokens=10, min_tokens=5)
    assert sample(request, 7, 8, max_model_len=5) == [False, True]
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_ignore_eos_keeps_going_but_stop_ids_still_stop():
    request = make_request("a", 3, max_tokens=10, ignore_eos=True, stop_token_ids=[42])
    assert sample(request, EOS, EOS, 42) == [False, False, True]
    assert request.stop_reason == 42
    request = make_request("b", 3, max_tokens=3, ignore_eos=True)
    assert sample(request, EOS, EOS, EOS) == [False, False, True]
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_request_without_eos_token_never_stops_on_it():
    request = make_request("a", 3, max_tokens=10, eos=None)
    assert sample(request, EOS, 7) == [False, False]


def test_update_stops_on_eos_and_frees_the_request():
    harness = Harness(make_scheduler())
    request = make_request("a", 5, max_tokens=10, stop_token_ids=[42])
    harness.add(request)
    so = harness.scheduler.schedule()
    harness.runner.execute(so)  # keep the runner in step; its output is replaced below
    outputs = harness.scheduler.update_from_output(
        so, ModelRunnerOutput(req_ids=["a"], sampled_token_ids=[[7]])
    )
    assert [(o.new_token_ids, o.finished) for o in outputs] == [([7], False)]
    so = harness.scheduler.schedule()
    (out,) = harness.scheduler.update_from_output(
        so, ModelRunnerOutput(req_ids=["a"], sampled_token_ids=[[42]])
    )
    assert out.new_token_ids == [42]
    assert out.finish_reason == FinishReason.STOP and out.stop_reason == 42
    assert not harness.scheduler.has_unfinished_requests()
    assert harness.scheduler.schedule().finished_req_ids == {"a"}
    harness.assert_all_blocks_free()


def test_update_truncates_several_sampled_tokens_at_the_stop():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5, max_tokens=10))
    so = scheduler.schedule()
    (out,) = scheduler.update_from_output(
        so, ModelRunnerOutput(req_ids=["a"], sampled_token_ids=[[7, EOS, 9]])
    )
    assert out.new_token_ids == [7, EOS]
    assert out.finish_reason == FinishReason.STOP
    assert scheduler.kv.block_pool.get_num_free_blocks() == scheduler.kv.num_blocks


def test_update_skips_requests_without_samples_and_unknown_ids():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(make_request("a", 20, max_tokens=10))
    so = scheduler.schedule()
    outputs = scheduler.update_from_output(
        so, ModelRunnerOutput(req_ids=["a", "ghost"], sampled_token_ids=[[], [5]])
    )
    assert outputs == []
    assert scheduler.requests["a"].num_output_tokens == 0


# -- randomized: no deadlock, no leak, no corruption -----------------------------------------


@pytest.mark.usefixtures("admit_freely")
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("enable_chunked_prefill", [True, False])
def test_many_requests_with_a_tiny_pool_all_finish(policy, enable_chunked_prefill):
    rng = random.Random(7)
    max_len = 32  # 8 blocks of 4: one request of max_model_len fills the whole pool
    harness = Harness(
        make_scheduler(
            num_blocks=8,
            max_num_seqs=6,
            max_num_batched_tokens=max_len,
            enable_chunked_prefill=enable_chunked_prefill,
            policy=policy,
            max_model_len=max_len,
        )
    )
    pending = []
    for i in range(40):
        prompt_len = rng.randint(1, max_len - 1)
        pending.append(
            make_request(
                f"r{i}",
                prompt_len,
                max_tokens=rng.randint(1, max_len - prompt_len),
                priority=rng.randint(0, 3),
            )
        )
    requests = list(pending)
    steps = 0
    while pending or harness.scheduler.has_unfinished_requests():
        assert steps < 3_000, "no progress: deadlock"
        for _ in range(rng.randint(0, 2)):
            if pending:
                harness.add(pending.pop(0))
        harness.step()
        steps += 1
    assert harness.scheduler.num_preemptions > 0
    assert_ran_to_length(harness, requests)
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("seed", range(8))
def test_randomized_churn_with_shared_prefixes(policy, seed):
    rng = random.Random(seed)
    block_size = 4
    harness = Harness(
        make_scheduler(
            num_blocks=24,
            block_size=block_size,
            max_num_seqs=6,
            max_num_batched_tokens=20,
            policy=policy,
            long_prefill_token_threshold=rng.choice([0, 4, 8]),
        )
    )
    kv = harness.scheduler.kv
    system_prompts = [[rng.randrange(10, 60) for _ in range(n)] for n in (5, 8, 12, 17, 30)]
    requests, aborted = {}, set()
    for _ in range(300):
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            rid = f"s{seed}-{len(requests)}"
            prompt = rng.choice(system_prompts) + [
                rng.randrange(10, 60) for _ in range(rng.randint(0, 10))
            ]
            request = make_request(
                rid,
                prompt,
                max_tokens=rng.randint(1, 12),
                priority=rng.randint(0, 2),
                cache_salt=rng.choice([None, None, None, "tenant"]),
            )
            requests[rid] = request
            harness.add(request)
        live = list(harness.scheduler.requests)
        if live and rng.random() < 0.05:
            victim = rng.choice(live)
            harness.scheduler.finish_requests([victim], RequestStatus.FINISHED_ABORTED)
            kv.block_pool.check_integrity()
            aborted.add(victim)
        harness.step()
    harness.run(max_steps=3_000)  # drain; a deadlock fails here
    for rid, request in requests.items():
        produced = harness.outputs[rid]
        full = expected_output(rid, request.num_prompt_tokens, request.max_tokens)
        if rid in aborted:
            assert request.status == RequestStatus.FINISHED_ABORTED
            assert produced == full[: len(produced)]
        else:
            assert produced == full
            assert harness.finish_reasons[rid] == FinishReason.LENGTH
    hits = sum(r.num_computed_tokens for so in harness.history for r in so.scheduled_new_reqs)
    assert hits > 0, "shared prefixes should hit the cache"
    assert harness.scheduler.num_preemptions > 0, "the pool should be tight enough to preempt"
    assert aborted
    harness.assert_all_blocks_free()


# -- structured outputs: a grammar the scheduler waits for, advances, and obeys -----------


class FakeGrammar:
    """An ``OutputGrammar``: ready after ``ready_after`` checks; accepts tokens until it has
    seen ``accept`` of them; terminated after ``terminate_after`` tokens."""

    def __init__(self, ready_after=0, accept=10**9, terminate_after=None, error=None) -> None:
        self.checks = 0
        self.ready_after = ready_after
        self.accept = accept
        self.terminate_after = terminate_after
        self.error = error
        self.error_cause = ErrorCause.INPUT
        self.accepted: list[int] = []

    def is_ready(self) -> bool:
        self.checks += 1
        return self.checks > self.ready_after

    def accept_token(self, token_id: int) -> bool:
        if len(self.accepted) >= self.accept:
            return False
        self.accepted.append(token_id)
        return True

    def is_terminated(self) -> bool:
        return self.terminate_after is not None and len(self.accepted) >= self.terminate_after

    released = 0

    def release(self) -> None:
        self.released += 1


def test_a_request_waits_for_its_grammar_without_blocking_others() -> None:
    harness = Harness(make_scheduler())
    slow = make_request("slow", 6, max_tokens=3)
    slow.structured_output = FakeGrammar(ready_after=3)
    free = make_request("free", 6, max_tokens=3)
    harness.add(slow, free)
    so, _ = harness.step()
    assert scheduled(so) == {"free": 6}, "the compiling request is skipped, the next one runs"
    assert [r.request_id for r in harness.scheduler.waiting] == ["slow"]
    harness.run()
    assert harness.finish_reasons == {"free": FinishReason.LENGTH, "slow": FinishReason.LENGTH}
    assert slow.structured_output.accepted == harness.outputs["slow"], "every token advanced it"
    assert slow.structured_output.released == 1
    harness.assert_all_blocks_free()


def test_every_ended_request_releases_its_grammar_once() -> None:
    """Finished, aborted while its grammar compiles, or refused for a grammar that failed:
    the grammar hears of it once (a compile nobody waits for can then be dropped)."""
    harness = Harness(make_scheduler())
    grammars = {name: FakeGrammar(ready_after=ready) for name, ready in
                [("done", 0), ("aborted", 10**9)]}  # fmt: skip
    grammars["failed"] = FakeGrammar(error="The grammar failed to compile: boom")
    for name, grammar in grammars.items():
        request = make_request(name, 5, max_tokens=2)
        request.structured_output = grammar
        harness.add(request)
    harness.step()
    harness.scheduler.finish_requests(["aborted"], RequestStatus.FINISHED_ABORTED)
    harness.run()
    assert {name: g.released for name, g in grammars.items()} == dict.fromkeys(grammars, 1)


def test_waiting_order_is_kept_while_grammars_compile() -> None:
    harness = Harness(make_scheduler(max_num_seqs=1))
    first = make_request("first", 4, max_tokens=1)
    first.structured_output = FakeGrammar(ready_after=1)
    second = make_request("second", 4, max_tokens=1)
    harness.add(first, second)
    so, _ = harness.step()
    assert scheduled(so) == {"second": 4}
    harness.run()
    assert set(harness.finish_reasons) == {"first", "second"}


def test_a_grammar_that_failed_to_build_aborts_its_request() -> None:
    harness = Harness(make_scheduler())
    broken = make_request("broken", 5)
    broken.structured_output = FakeGrammar(error="The grammar failed to compile: boom")
    harness.add(broken, make_request("ok", 5, max_tokens=2))
    _, outputs = harness.step()
    assert (outputs[0].request_id, outputs[0].finish_reason) == ("broken", FinishReason.ABORT)
    assert outputs[0].new_token_ids == []
    harness.run()
    assert harness.finish_reasons["ok"] == FinishReason.LENGTH
    harness.assert_all_blocks_free()


def test_a_grammar_too_slow_to_follow_fails_its_request_as_its_own_input() -> None:
    """The structured-output manager sets ``error`` on a grammar whose mask took too long
    (after the step that sampled with it): the request fails with that text, marked as
    its own input's doing (its caller's 400); the request beside it runs on."""
    harness = Harness(make_scheduler())
    slow = make_request("slow", 5, max_tokens=6)
    slow.structured_output = FakeGrammar()
    harness.add(slow, make_request("ok", 5, max_tokens=3))
    harness.step()
    slow.structured_output.error = "The structured output's constraint took 0.20 s"
    _, outputs = harness.step()
    failed = next(o for o in outputs if o.request_id == "slow")
    assert failed.finish_reason == FinishReason.ERROR and failed.error_cause == ErrorCause.INPUT
    assert failed.error == "The structured output's constraint took 0.20 s"
    assert len(slow.structured_output.accepted) == 2  # the step's token is kept
    harness.run()
    assert harness.finish_reasons["ok"] == FinishReason.LENGTH
    harness.assert_all_blocks_free()


def test_a_slow_grammar_whose_token_ends_the_request_is_not_failed() -> None:
    """The step that found the grammar too slow sampled the request's last token: its
    output is complete, so it ends as it would have (the error is for a request that would
    run on)."""
    harness = Harness(make_scheduler())
    last = make_request("last", 5, max_tokens=2)
    last.structured_output = FakeGrammar()
    harness.add(last)
    harness.step()
    last.structured_output.error = "The structured output's constraint took 0.20 s"
    harness.run()
    assert harness.finish_reasons["last"] == FinishReason.LENGTH
    harness.assert_all_blocks_free()


def test_a_token_the_grammar_rejects_fails_the_request_as_its_own_input() -> None:
    """The mask allowed no token (an empty language, or min_tokens and the like excluding
    all it allows): the request fails as its caller's input (a 400), not a silent abort,
    and the request beside it runs on."""
    harness = Harness(make_scheduler())
    request = make_request("r", 5, max_tokens=6)
    request.structured_output = FakeGrammar(accept=2)
    harness.add(request, make_request("ok", 5, max_tokens=4))
    failed = None
    while harness.scheduler.has_unfinished_requests():
        _, outputs = harness.step()
        failed = failed or next((o for o in outputs if o.request_id == "r" and o.error), None)
    assert failed is not None and failed.finish_reason == FinishReason.ERROR
    assert (
        failed.error_cause == ErrorCause.INPUT
        and "allows no token after 2 output tokens" in failed.error
    )
    assert harness.finish_reasons["ok"] == FinishReason.LENGTH
    assert request.structured_output.released == 1
    harness.assert_all_blocks_free()


def test_a_terminated_grammar_stops_the_request_even_with_ignore_eos() -> None:
    harness = Harness(make_scheduler())
    request = make_request("r", 5, max_tokens=10, ignore_eos=True)
    request.structured_output = FakeGrammar(terminate_after=4)
    harness.add(request)
    harness.run()
    assert harness.finish_reasons["r"] == FinishReason.STOP
    assert len(harness.outputs["r"]) == 4
