"""Prompt chunks sized by the step's predicted time (``core/step_time.py``): the model's fit,
the largest chunk it allows, and the scheduler keeping steps with other requests near the
target while a long prompt is computed."""

from __future__ import annotations

import math
import random

import pytest

from pagedllm.config import EngineArgs, SchedulerConfig, UsageContext
from pagedllm.core import scheduler as scheduler_module
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.core.step_time import PROBE_CHUNK, StepTimeModel, StepWork, chunk_pairs
from tests.unit.core_helpers import Harness, expected_output, make_request, make_scheduler

# A simulated device: seconds of a step by what it computes (a CPU-like one, where a
# 2,048-token chunk after 4,000 tokens takes ~1.4 s).
OVERHEAD, PER_TOKEN, PER_PAIR = 0.005, 2e-4, 1e-7


def simulated_seconds(work: StepWork, overhead: float = OVERHEAD) -> float:
    return overhead + PER_TOKEN * work.tokens + PER_PAIR * work.pairs


def random_work(rng: random.Random, chunk: bool, most_tokens: int = 2048) -> StepWork:
    tokens = rng.randint(1, most_tokens)
    pairs = chunk_pairs(tokens, rng.randint(0, 8000)) if chunk else 0
    return StepWork(tokens, pairs)


def trained(seed: int, steps: int) -> StepTimeModel:
    """A model that saw ``steps`` random steps, every other one with a chunk."""
    rng = random.Random(seed)
    model = StepTimeModel()
    for i in range(steps):
        work = random_work(rng, chunk=i % 2 == 0)
        model.observe(work, simulated_seconds(work))
    return model


def test_the_fit_recovers_a_linear_cost():
    model = trained(seed=0, steps=40)
    assert model.ready
    scaled = (OVERHEAD, PER_TOKEN * 1e3, PER_PAIR * 1e6)
    assert model.coefficients() == pytest.approx(scaled, rel=1e-6)
    work = StepWork(100, chunk_pairs(99, 5000))
    assert model.predict(work) == pytest.approx(simulated_seconds(work), rel=1e-6)


def test_the_largest_chunk_is_the_largest_within_the_time_given():
    model = trained(seed=1, steps=20)
    widest = StepWork(2048, chunk_pairs(2048, 0))  # chunks may go to 4,096 tokens
    model.observe(widest, simulated_seconds(widest))
    base = StepWork(40, chunk_pairs(30, 100))
    room = 0.5 - simulated_seconds(base)
    for computed in (0, 1000, 7000):
        c = model.chunk_within(computed, room)

        def seconds(n: int, computed: int = computed) -> float:
            extra = StepWork(base.tokens + n, base.pairs + chunk_pairs(n, computed))
            return simulated_seconds(extra)

        assert c > 0
        assert seconds(c) <= 0.5 < seconds(c + 1)
    assert model.chunk_within(0, 0.0) == 0 and model.chunk_within(0, -1.0) == 0


def test_costs_are_never_negative():
    """Steps whose time falls as their tokens grow (noise, another process): a negative cost
    per token would size chunks by it; the fit drops that term instead."""
    model = StepTimeModel()
    rng = random.Random(2)
    for i in range(20):
        work = random_work(rng, chunk=i % 2 == 0)
        model.observe(work, max(0.001, 1.0 + PER_PAIR * work.pairs - 4e-4 * work.tokens))
    coefficients = model.coefficients()
    assert min(coefficients) >= 0 and coefficients[1] == 0


def test_a_chunk_goes_at_most_twice_past_the_largest_step_seen():
    """A fit of small chunks only says nothing of large ones: chunks grow by doubling."""
    model = StepTimeModel()
    rng = random.Random(5)
    chunk_steps = [random_work(rng, chunk=True, most_tokens=256) for _ in range(10)]
    for work in chunk_steps:
        model.observe(work, simulated_seconds(work))
        model.observe(StepWork(work.tokens, 0), simulated_seconds(StepWork(work.tokens, 0)))
    largest = max(work.tokens for work in chunk_steps)
    assert model.chunk_within(0, 100.0) == 2 * largest


def test_chunk_steps_are_remembered_through_a_long_run_of_decodes():
    rng = random.Random(3)
    model = StepTimeModel()
    for _ in range(16):
        work = random_work(rng, chunk=True)
        model.observe(work, simulated_seconds(work))
    for _ in range(500):  # decodes only: their own cost, none for pairs
        work = StepWork(rng.randint(1, 64), 0)
        model.observe(work, simulated_seconds(work))
    assert model.ready
    assert model.coefficients()[2] == pytest.approx(PER_PAIR * 1e6, rel=1e-6)


class Clock:
    """``time.perf_counter`` of the scheduler's module, advanced by the simulated steps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_timed(harness: Harness, clock: Clock, steps: int | None = None) -> list[float]:
    """Step as the engine core does without async scheduling (schedule, run, observe,
    update), each step taking its simulated time, ``steps`` times or until every request
    ended; return each step's seconds."""
    scheduler = harness.scheduler
    seconds: list[float] = []
    while scheduler.has_unfinished_requests() and len(seconds) != steps:
        assert len(seconds) < 2000
        so = scheduler.schedule()
        took = simulated_seconds(work_of(so, scheduler))
        clock.now += took
        out = harness.runner.execute(so)
        scheduler.observe_step(so)
        for o in scheduler.update_from_output(so, out):
            harness.outputs[o.request_id].extend(o.new_token_ids)
        harness.history.append(so)
        seconds.append(took)
    return seconds


def work_of(so: SchedulerOutput, scheduler: object) -> StepWork:
    """What the step computes, from the plan alone (the same whether or not the scheduler
    recorded it)."""
    if so.work is not None:
        return so.work
    computed = {r.req_id: r.num_computed_tokens for r in so.scheduled_new_reqs}
    computed |= {r.req_id: r.num_computed_tokens for r in so.scheduled_cached_reqs}
    pairs = sum(
        chunk_pairs(n, computed[rid]) for rid, n in so.num_scheduled_tokens.items() if n > 1
    )
    return StepWork(so.total_num_scheduled_tokens, pairs)


@pytest.mark.parametrize("target", [0.0, 0.5])
def test_a_long_prompt_beside_short_requests_keeps_steps_near_the_target(monkeypatch, target):
    clock = Clock()
    monkeypatch.setattr(scheduler_module.time, "perf_counter", clock)
    scheduler = make_scheduler(
        num_blocks=1024, block_size=16, max_num_seqs=16, max_num_batched_tokens=2048,
        max_model_len=16384, step_time_target=target,
    )  # fmt: skip
    harness = Harness(scheduler)
    short = [make_request(f"s{i}", 20, max_tokens=300) for i in range(4)]
    harness.add(*short)
    harness.add(make_request("warm", 1000, max_tokens=1))  # the model's first chunk steps
    run_timed(harness, clock, steps=8)
    long = make_request("long", 8000, max_tokens=2)
    harness.add(long)
    seconds = run_timed(harness, clock)
    for request in (*short, long):
        rid = request.request_id
        assert harness.outputs[rid] == expected_output(
            rid, request.num_prompt_tokens, 300 if rid != "long" else 2
        )
    harness.assert_all_blocks_free()
    # The steps that computed a chunk of the long prompt while a short request ran.
    shared = [
        took
        for so, took in zip(harness.history[-len(seconds) :], seconds, strict=True)
        if so.num_scheduled_tokens.get("long", 0) > 1 and len(so.num_scheduled_tokens) > 1
    ]
    assert shared
    if target:
        assert max(shared) <= target * 1.01
        assert len(shared) > 8000 / 2048 + 1  # more, shorter steps than the budget's
    else:
        assert max(shared) > 3 * 0.5  # what the target prevents: 2,048-token chunks


def test_a_step_past_the_target_still_gives_a_chunk_a_share_of_it():
    """Steps past the target whatever they do (a 0.6 s overhead): a prompt chunk still gets
    half the target's time, and at least 64 tokens where even that fits fewer."""
    for per_token_slowdown, expected in ((1, None), (100, 64)):
        scheduler = make_scheduler(
            num_blocks=256, block_size=16, max_num_batched_tokens=2048, step_time_target=0.5
        )
        model = scheduler.step_time
        assert model is not None
        rng = random.Random(4)
        for i in range(8):
            work = random_work(rng, chunk=i % 2 == 0)
            seconds = simulated_seconds(work, overhead=0.6) - OVERHEAD
            model.observe(work, 0.6 + per_token_slowdown * (seconds - 0.6))
        harness = Harness(scheduler)
        harness.add(make_request("a", 2000, max_tokens=1))
        so, _ = harness.step()
        chunk = so.num_scheduled_tokens["a"]
        if expected is None:
            assert chunk == model.chunk_within(0, 0.25)
            assert 64 < chunk < 2000
        else:
            assert chunk == expected


def test_chunks_are_probes_until_the_model_has_steps():
    scheduler = make_scheduler(
        num_blocks=256, block_size=16, max_num_batched_tokens=2048, step_time_target=0.5
    )
    harness = Harness(scheduler)
    harness.add(make_request("a", 1000, max_tokens=1))
    so, _ = harness.step()
    assert so.num_scheduled_tokens["a"] == PROBE_CHUNK
    assert so.work == StepWork(PROBE_CHUNK, chunk_pairs(PROBE_CHUNK, 0))


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_a_bad_target_is_refused(bad):
    with pytest.raises(ValueError, match="step_time_target must be a number of seconds"):
        SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=8, step_time_target=bad)


def test_the_server_sizes_chunks_by_time_and_the_offline_llm_does_not(tiny_models):
    def target(usage: UsageContext, **kwargs: object) -> float:
        args = EngineArgs(model=str(tiny_models["llama"]), **kwargs)
        return args.create_engine_config(usage).scheduler_config.step_time_target

    assert target(UsageContext.OPENAI_API_SERVER) == 0.5
    assert target(UsageContext.LLM_CLASS) == 0.0
    assert target(UsageContext.LLM_CLASS, step_time_target=2.0) == 2.0
    assert target(UsageContext.OPENAI_API_SERVER, step_time_target=0.0) == 0.0
    # Without chunked prefill there are no chunks to size: off, and refused when asked for.
    assert target(UsageContext.OPENAI_API_SERVER, enable_chunked_prefill=False) == 0.0
    with pytest.raises(ValueError, match="step_time_target sizes prompt chunks; it needs"):
        target(UsageContext.LLM_CLASS, enable_chunked_prefill=False, step_time_target=0.5)
