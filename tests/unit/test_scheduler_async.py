"""The scheduler one step ahead (async scheduling): a step is scheduled before the previous
step's tokens are known, its sampled tokens counted as placeholders until they arrive."""

from __future__ import annotations

import pytest

from pagedllm.core.request import FinishReason, RequestStatus
from pagedllm.core.scheduler_output import ModelRunnerOutput
from tests.unit.core_helpers import EOS, make_request, make_scheduler


def sampled(so, tokens: dict[str, int]) -> ModelRunnerOutput:
    ids = list(so.num_scheduled_tokens)
    return ModelRunnerOutput(ids, [[tokens[r]] if r in tokens else [] for r in ids])


def test_decode_is_scheduled_before_the_previous_token_is_known():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5, max_tokens=4))
    first = scheduler.schedule()
    request = scheduler.requests["a"]
    assert request.num_output_placeholders == 1
    second = scheduler.schedule()  # the token of `first` is still on the device
    assert second.num_scheduled_tokens == {"a": 1}
    assert (request.num_computed_tokens, request.num_tokens) == (6, 5)
    assert request.num_output_placeholders == 2
    scheduler.update_from_output(first, sampled(first, {"a": 11}))
    scheduler.update_from_output(second, sampled(second, {"a": 12}))
    assert request.output_token_ids == [11, 12]
    assert request.num_output_placeholders == 0
    assert request.num_computed_tokens == request.num_tokens - 1


def test_a_token_in_flight_that_reaches_max_tokens_is_not_scheduled_past():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5, max_tokens=1))
    scheduler.add_request(make_request("b", 3, max_tokens=8))
    first = scheduler.schedule()
    second = scheduler.schedule()
    assert second.num_scheduled_tokens == {"b": 1}  # "a" ends with its token in flight
    (out_a, _) = scheduler.update_from_output(first, sampled(first, {"a": 11, "b": 21}))
    assert out_a.finish_reason == FinishReason.LENGTH
    scheduler.update_from_output(second, sampled(second, {"b": 22}))
    assert scheduler.requests["b"].output_token_ids == [21, 22]


def test_tokens_of_a_request_finished_meanwhile_are_dropped():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5, max_tokens=8))
    first = scheduler.schedule()
    second = scheduler.schedule()
    (out,) = scheduler.update_from_output(first, sampled(first, {"a": EOS}))
    assert out.finish_reason == FinishReason.STOP
    # The id comes back at once as a new request: the old step's token is not its.
    scheduler.add_request(make_request("a", 4, max_tokens=8))
    third = scheduler.schedule()
    assert scheduler.update_from_output(second, sampled(second, {"a": 30})) == []
    scheduler.update_from_output(third, sampled(third, {"a": 40}))
    assert scheduler.requests["a"].output_token_ids == [40]


@pytest.mark.usefixtures("admit_freely")
def test_preempted_with_a_token_in_flight_that_ends_it():
    # 4 blocks of 4 tokens: two requests of 7 tokens fill them; the next decode of "a"
    # needs a fifth block and preempts "b", whose first token is still in flight.
    scheduler = make_scheduler(num_blocks=4, block_size=4, enable_caching=False)
    scheduler.add_request(make_request("a", 8, max_tokens=8))
    scheduler.add_request(make_request("b", 7, max_tokens=8))
    first = scheduler.schedule()
    second = scheduler.schedule()
    assert second.preempted_req_ids == {"b"}
    b = scheduler.requests["b"]
    assert b.status == RequestStatus.PREEMPTED and b.num_output_placeholders == 1
    outputs = scheduler.update_from_output(first, sampled(first, {"a": 11, "b": EOS}))
    assert [o.request_id for o in outputs if o.finished] == ["b"]
    assert "b" not in scheduler.requests and len(scheduler.waiting) == 0
    scheduler.update_from_output(second, sampled(second, {"a": 12}))
    scheduler.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert scheduler.kv.block_pool.get_num_free_blocks() == scheduler.kv.num_blocks
