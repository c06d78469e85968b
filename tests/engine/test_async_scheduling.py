"""Async scheduling (step N+1 queued before step N's tokens are read) gives exactly the
outputs of synchronous steps: mixed parameters, eos and stop ids found one step late,
max_tokens of 1, preemption with a token in flight, n > 1, logprobs, requests that force
synchronous steps, and an aborted id reused at once. On the CPU, where it is off by
default, it is switched on here so CI runs the same logic the GPU does."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.engine.messages import EngineCoreRequest
from tests.conftest import engine_in_process
from tests.engine.test_generate import make_llm, mixed_params, mixed_prompts, token_ids

EOS = 2  # the tiny configs' eos id


def outputs_of(llm: LLM, prompts, params) -> list[tuple]:
    """Tokens, finish and stop reasons exactly; logprobs as (id, value) per position."""
    result = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        for c in out.outputs:
            lps = None
            if c.logprobs is not None:
                lps = [sorted((t, lp.logprob) for t, lp in pos.items()) for pos in c.logprobs]
            result.append((c.token_ids, c.finish_reason, c.stop_reason, lps))
    return result


def assert_same(actual: list[tuple], expected: list[tuple]) -> None:
    """Logprob values within float32 noise: a recomputed (preempted) prefix sums in
    another order than the decode steps did."""
    assert [a[:3] for a in actual] == [e[:3] for e in expected]
    for a, e in zip(actual, expected):
        if e[3] is None:
            assert a[3] is None
            continue
        for pos_a, pos_e in zip(a[3], e[3], strict=True):
            assert [t for t, _ in pos_a] == [t for t, _ in pos_e]
            assert [v for _, v in pos_a] == pytest.approx([v for _, v in pos_e], abs=1e-4)


@pytest.fixture(scope="module")
def engines(tiny_models):
    path = tiny_models["llama"]
    with engine_in_process():  # the tests read the scheduler's and the core's state
        sync = make_llm(path, async_scheduling=False)
        ahead = make_llm(path, async_scheduling=True)
    assert ahead.llm_engine.config.scheduler_config.async_scheduling
    return sync, ahead


def varied_params(n: int) -> list[SamplingParams]:
    """mixed_params, plus rows that stop on eos (not ignored), on a stop id, after one
    token, with logprobs, with min_tokens, and n > 1."""
    params = mixed_params(n)
    for i in range(0, n, 6):
        params[i] = SamplingParams(temperature=1.0, seed=i, max_tokens=40, detokenize=False)
    for i in range(1, n, 6):
        params[i] = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False)
    for i in range(2, n, 6):
        params[i] = SamplingParams(temperature=0.9, seed=i, max_tokens=30, logprobs=3,
                                   stop_token_ids=[17, 40, 99], detokenize=False)  # fmt: skip
    for i in range(3, n, 6):
        params[i] = SamplingParams(n=3, temperature=1.0, seed=i, max_tokens=9, min_tokens=4,
                                   stop_token_ids=[EOS], detokenize=False)  # fmt: skip
    return params


def test_async_equals_sync_on_a_mixed_batch(engines):
    sync, ahead = engines
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(36, seed=21)]
    params = varied_params(36)
    expected = outputs_of(sync, prompts, params)
    assert_same(outputs_of(ahead, prompts, params), expected)
    # Rows that stopped early (eos, stop ids) were scheduled one step past their end.
    assert any(reason == "stop" for _, reason, _, _ in expected)
    core = ahead.llm_engine.engine_core
    assert core._in_flight is None or not core.scheduler.has_unfinished_requests()
    pool = core.kv_cache_manager.block_pool
    pool.check_integrity()
    assert pool.get_num_free_blocks() == pool.num_blocks


@pytest.mark.usefixtures("admit_freely")
def test_async_preemption_with_tokens_in_flight(tiny_models, engines):
    sync, _ = engines
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(24, seed=5)]
    params = varied_params(24)
    expected = outputs_of(sync, prompts, params)
    with engine_in_process():
        tiny = make_llm(tiny_models["llama"], async_scheduling=True,
                        kv_cache_memory_bytes=512 * 16 * 32, max_model_len=256)  # fmt: skip
    assert_same(outputs_of(tiny, prompts, params), expected)
    assert tiny.llm_engine.engine_core.scheduler.num_preemptions > 0
    pool = tiny.llm_engine.engine_core.kv_cache_manager.block_pool
    pool.check_integrity()
    assert pool.get_num_free_blocks() == pool.num_blocks


@pytest.mark.parametrize("blocking", ["every", "alternate"])
def test_steps_whose_launch_blocks_resolve_the_step_in_flight_first(engines, monkeypatch, blocking):
    """The core resolves the step in flight before launching a step the runner says may
    block (on CUDA: eager steps over the largest graph), every step or every other one:
    the outputs stay those of synchronous steps, eos found, blocks all returned."""
    sync, ahead = engines
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(24, seed=13)]
    params = varied_params(24)
    expected = outputs_of(sync, prompts, params)
    core = ahead.llm_engine.engine_core
    calls = []

    def launch_blocks(scheduler_output) -> bool:
        calls.append(core._in_flight is not None)
        return blocking == "every" or len(calls) % 2 == 0

    monkeypatch.setattr(core.runner, "launch_blocks", launch_blocks)
    assert_same(outputs_of(ahead, prompts, params), expected)
    assert sum(calls) > 10  # asked with a step in flight, again and again
    pool = core.kv_cache_manager.block_pool
    pool.check_integrity()
    assert pool.get_num_free_blocks() == pool.num_blocks


def test_outputs_leave_before_a_launch_that_blocks(engines, monkeypatch):
    """A step() that finds the next launch blocking returns the step in flight's tokens
    without launching anything; the following call launches the held step. Requests aborted
    while it is held still run in it, and every block comes back."""
    _, ahead = engines
    core = ahead.llm_engine.engine_core
    launches = []
    real_execute = core.runner.execute_model

    def execute_model(*args, **kwargs):
        launches.append(1)
        return real_execute(*args, **kwargs)

    while core.has_unfinished_requests() or core._in_flight is not None:
        core.step()  # what earlier tests left (a step held or in flight) runs out first
    monkeypatch.setattr(core.runner, "launch_blocks", lambda so: True)
    monkeypatch.setattr(core.runner, "execute_model", execute_model)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    for i, prompt in enumerate(mixed_prompts(4, seed=3)):
        core.add_request(EngineCoreRequest(f"held-{i}", prompt, params, EOS, 0.0, 0, None))
    core.step()  # nothing in flight: launched at once
    assert launches == [1] and core._in_flight is not None
    outputs, iteration = core.step()
    assert launches == [1], "the blocking launch waited for the next call"
    assert core._in_flight is None and core._pending_launch is not None
    assert sum(len(o.new_token_ids) for o in outputs) == 4 == iteration.num_generation_tokens
    assert iteration.step_seconds == 0.0  # half a step: counted when it is launched
    core.abort_requests([f"held-{i}" for i in range(4)])
    assert core.has_unfinished_requests()  # the held step still has to run
    outputs, iteration = core.step()
    assert launches == [1, 1] and core._pending_launch is None and iteration.step_seconds > 0
    while core.has_unfinished_requests():
        core.step()
    pool = core.kv_cache_manager.block_pool
    pool.check_integrity()
    assert pool.get_num_free_blocks() == pool.num_blocks


def test_requests_needing_known_tokens_make_steps_synchronous(engines):
    sync, ahead = engines
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(12, seed=8)]
    params = mixed_params(12)
    seen: list[int] = []

    def processor(output_ids: list[int], logits):
        seen.append(len(output_ids))
        logits[5] = -1e9
        return logits

    params[3] = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True,
                               logits_processors=[processor], detokenize=False)  # fmt: skip
    expected = outputs_of(sync, prompts, params)
    seen.clear()
    assert_same(outputs_of(ahead, prompts, params), expected)
    assert seen == list(range(10))  # the processor saw every token before the next step
    assert ahead.llm_engine.engine_core.scheduler.num_sync_requests == 0


def test_aborted_id_reused_while_its_step_is_in_flight(engines):
    _, ahead = engines
    engine = ahead.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, detokenize=False)
    engine.add_request("r", {"prompt_token_ids": [5, 6, 7]}, params)
    for _ in range(4):
        engine.step()
    assert engine.engine_core._in_flight is not None
    engine.abort_request("r")
    short = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, detokenize=False)
    engine.add_request("r", {"prompt_token_ids": [9, 10]}, short)
    finals = []
    while engine.has_unfinished_requests():
        finals += [o for o in engine.step() if o.finished]
    alone = token_ids(ahead.generate({"prompt_token_ids": [9, 10]}, short, use_tqdm=False))
    assert [o.outputs[0].token_ids for o in finals] == alone


def test_flag_and_default():
    import argparse

    from pagedllm.config import EngineArgs
    from pagedllm.entrypoints.cli.engine_flags import add_engine_flags, engine_args_from

    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    assert engine_args_from(parser.parse_args(["--async-scheduling"])).async_scheduling is True
    assert engine_args_from(parser.parse_args(["--no-async-scheduling"])).async_scheduling is False
    assert EngineArgs().async_scheduling is None  # resolved by device: on with CUDA only
