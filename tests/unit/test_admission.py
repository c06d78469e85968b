"""Admission by forecast (``pagedllm/core/admission.py``): a waiting request starts only if
everyone's projected blocks still fit, so requests of known length are never preempted."""

from __future__ import annotations

import random

import pytest

from pagedllm.core import admission
from pagedllm.core.admission import OPEN_HORIZON, remaining_steps
from tests.unit.core_helpers import Harness, expected_output, make_request, make_scheduler


def fixed_length_mix(seed: int, n: int = 24) -> list:
    rng = random.Random(seed)
    return [
        make_request(f"s{seed}-{i}", rng.randint(1, 24), rng.randint(1, 40), ignore_eos=True)
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(8))
def test_requests_that_end_by_length_are_never_preempted(seed):
    """Any mix whose requests each fit alone runs without a preemption, to the same tokens."""
    harness = Harness(make_scheduler(num_blocks=40, max_num_seqs=16, max_num_batched_tokens=64))
    requests = fixed_length_mix(seed)
    harness.add(*requests)
    harness.run()
    assert harness.scheduler.num_preemptions == 0
    for r in requests:
        assert harness.outputs[r.request_id] == expected_output(
            r.request_id, r.num_prompt_tokens, r.max_tokens
        )
    harness.assert_all_blocks_free()


@pytest.mark.usefixtures("admit_freely")
def test_admitting_freely_preempts_the_same_mixes():
    """What the forecast prevents: without it (PAGEDLLM_ADMISSION_FORECAST=0) these mixes
    preempt."""
    preemptions = 0
    for seed in range(8):
        harness = Harness(make_scheduler(num_blocks=40, max_num_seqs=16, max_num_batched_tokens=64))
        harness.add(*fixed_length_mix(seed))
        harness.run()
        preemptions += harness.scheduler.num_preemptions
    assert preemptions > 0


def test_uniform_batch_runs_as_many_as_fit_at_their_end():
    """W2's shape in small: 12-token prompts, 12 tokens out (23 tokens of KV at the end:
    6 blocks of 4); 40 blocks. The forecast's bound (6.5 blocks each) lets six run together,
    never more, and none is preempted."""
    harness = Harness(make_scheduler(num_blocks=40, max_num_seqs=32, max_num_batched_tokens=256))
    harness.add(*[make_request(f"u{i}", 12, max_tokens=12, ignore_eos=True) for i in range(20)])
    widest = 0
    while harness.scheduler.has_unfinished_requests():
        harness.step()
        widest = max(widest, len(harness.scheduler.running))
    assert harness.scheduler.num_preemptions == 0
    assert widest == 6


def test_requests_that_may_stop_count_only_the_horizon():
    """Eos may end them any step: a large max_tokens does not hold the others back."""
    harness = Harness(make_scheduler(num_blocks=64, max_num_seqs=16, max_num_batched_tokens=256))
    harness.add(*[make_request(f"e{i}", 4, max_tokens=1000) for i in range(6)])
    so, _ = harness.step()
    assert len(so.scheduled_new_reqs) == 6  # by max_tokens, one at a time (251 blocks each)
    assert remaining_steps(harness.scheduler.requests["e0"], 4096) == OPEN_HORIZON


def test_the_same_requests_with_ignore_eos_wait_for_room():
    harness = Harness(make_scheduler(num_blocks=64, max_num_seqs=16, max_num_batched_tokens=256))
    harness.add(*[make_request(f"f{i}", 4, max_tokens=100, ignore_eos=True) for i in range(6)])
    so, _ = harness.step()
    assert len(so.scheduled_new_reqs) == 2  # 26 blocks each at their end


def test_stop_ids_and_stop_strings_make_a_request_open_ended():
    plain = make_request("p", 4, max_tokens=100, ignore_eos=True)
    ids = make_request("i", 4, max_tokens=100, ignore_eos=True, stop_token_ids=[7])
    strings = make_request("t", 4, max_tokens=100, ignore_eos=True, stop=["x"])
    assert admission.ends_by_length_only(plain)
    assert not admission.ends_by_length_only(ids)
    assert not admission.ends_by_length_only(strings)
    assert remaining_steps(plain, max_model_len=50) == 46  # the context ends it first


def test_a_shared_prefix_is_counted_once():
    """Eight requests after one 32-token prefix (8 blocks), each 2 blocks of its own at its
    end: 8 + 8 x 2 = 24 of 30 blocks. Counting the prefix per request would admit three."""
    prefix = list(range(100, 132))
    harness = Harness(make_scheduler(num_blocks=30, max_num_seqs=16, max_num_batched_tokens=512))
    first = make_request("h0", [*prefix, 900, 901, 902], max_tokens=4, ignore_eos=True)
    harness.add(first)
    harness.step()  # the prefix is computed (and cached) by the first request
    rest = [
        make_request(f"h{i}", [*prefix, 900 + 3 * i, 901 + 3 * i, 902 + 3 * i], 4, ignore_eos=True)
        for i in range(1, 8)
    ]
    harness.add(*rest)
    so, _ = harness.step()
    assert len(so.scheduled_new_reqs) == 7
    harness.run()
    assert harness.scheduler.num_preemptions == 0
    harness.assert_all_blocks_free()


def test_a_request_alone_is_admitted_whatever_its_forecast():
    """Nothing running: the first request starts even if its end would not fit (the
    forecast never blocks an idle engine); the second waits for it."""
    harness = Harness(make_scheduler(num_blocks=12, max_num_seqs=4, max_num_batched_tokens=64))
    harness.add(make_request("a", 8, max_tokens=30, ignore_eos=True))  # 10 blocks at its end
    harness.add(make_request("b", 8, max_tokens=30, ignore_eos=True))
    so, _ = harness.step()
    assert [r.req_id for r in so.scheduled_new_reqs] == ["a"]
    harness.run()
    assert harness.scheduler.num_preemptions == 0
    assert len(harness.outputs["a"]) == len(harness.outputs["b"]) == 30
