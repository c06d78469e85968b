"""A failing step fails only the request that caused it: the scheduler resets the step's
requests, tries them apart (bisecting) and fails the culprit; everyone else finishes with
the output they would have had, and every block is free afterwards."""

from __future__ import annotations

import pytest

from pagedllm.core.quarantine import Quarantine
from pagedllm.core.request import FinishReason, RequestStatus
from tests.unit.core_helpers import Harness, expected_output, make_request, make_scheduler


def test_bisection_order():
    q = Quarantine()
    assert q.on_trial() is None
    assert q.step_failed(["a", "b", "c", "d", "e"]) is None
    assert q.on_trial() == {"a", "b"}
    assert q.step_failed(["a", "b"]) is None  # the trial step failed: halves
    assert q.on_trial() == {"a"}
    q.cleared(["a"])
    assert q.on_trial() == {"b"}
    assert q.step_failed(["b"]) == "b"  # alone and failing: the culprit
    assert q.on_trial() == {"c", "d", "e"}
    q.discard(["d"])
    q.cleared(["c", "e"])
    assert not q.active


def test_members_a_trial_step_did_not_schedule_stay_suspects():
    q = Quarantine()
    q.step_failed(["a", "b", "c", "d"])
    q.step_failed(["a", "b"])  # ... and a second failure within the trial of {a, b}
    q.cleared(["a"])
    assert q.on_trial() == {"b"}
    q.cleared(["b"])
    assert q.on_trial() == {"c", "d"}


def _run_with_poison(culprit_index: int, num_requests: int = 6, **scheduler_kwargs):
    harness = Harness(make_scheduler(**scheduler_kwargs))
    requests = [make_request(f"r{i}", 5 + i, max_tokens=6) for i in range(num_requests)]
    harness.add(*requests)
    for _ in range(3):  # everyone is decoding when the poison starts to act
        harness.step()
    culprit = requests[culprit_index].request_id
    harness.runner.poisoned.add(culprit)
    trial_steps = []
    while harness.scheduler.has_unfinished_requests():
        on_trial = harness.scheduler.quarantine.on_trial()
        so, _ = harness.step()
        if on_trial is not None:
            trial_steps.append((on_trial, set(so.num_scheduled_tokens)))
    return harness, requests, culprit, trial_steps


def test_the_culprit_alone_fails_and_the_others_finish_unchanged():
    harness, requests, culprit, trial_steps = _run_with_poison(culprit_index=4)
    assert harness.finish_reasons[culprit] == FinishReason.ERROR
    for request in requests:
        if request.request_id == culprit:
            continue
        assert harness.finish_reasons[request.request_id] == FinishReason.LENGTH
        assert harness.outputs[request.request_id] == expected_output(
            request.request_id, request.num_prompt_tokens, 6
        )
    # Trial steps schedule members of the group on trial and nobody else.
    assert trial_steps and all(scheduled <= group for group, scheduled in trial_steps)
    harness.assert_all_blocks_free()
    assert not harness.scheduler.quarantine.active


@pytest.mark.usefixtures("admit_freely")
def test_culprit_found_under_preemption_pressure():
    # Few blocks: suspects on trial must preempt requests outside the trial to run.
    harness, requests, culprit, _ = _run_with_poison(
        culprit_index=0, num_requests=6, num_blocks=12, block_size=4
    )
    assert harness.finish_reasons[culprit] == FinishReason.ERROR
    others = [r.request_id for r in requests if r.request_id != culprit]
    assert all(harness.finish_reasons[rid] == FinishReason.LENGTH for rid in others)
    assert harness.scheduler.num_preemptions > 0
    harness.assert_all_blocks_free()


def test_a_lone_failing_request_is_failed_at_once():
    harness = Harness(make_scheduler())
    harness.add(make_request("solo", 4, max_tokens=4))
    harness.runner.poisoned.add("solo")
    _, outputs = harness.step()
    assert [o.finish_reason for o in outputs] == [FinishReason.ERROR]
    assert "poisoned request solo" in (outputs[0].error or "")
    assert not harness.scheduler.has_unfinished_requests()
    harness.assert_all_blocks_free()


def test_a_suspect_aborted_during_its_trial_leaves_the_quarantine():
    harness = Harness(make_scheduler())
    requests = [make_request(f"a{i}", 4, max_tokens=8) for i in range(4)]
    harness.add(*requests)
    harness.step()
    harness.runner.poisoned.add("a3")
    harness.step()  # fails: all four become suspects
    assert harness.scheduler.quarantine.active
    harness.scheduler.finish_requests(["a0", "a1", "a2", "a3"], RequestStatus.FINISHED_ABORTED)
    assert not harness.scheduler.quarantine.active
    harness.assert_all_blocks_free()
