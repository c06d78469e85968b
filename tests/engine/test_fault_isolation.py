"""A request that makes a step fail is failed alone: its bystanders finish with exactly the
outputs they have without it, and every KV block is free afterwards. Offline here (sync and
async scheduling); the server's side is in tests/server/test_fault_isolation.py."""

from __future__ import annotations

import sys

import pytest

from pagedllm import SamplingParams
from pagedllm.worker.model_runner import ModelRunner
from tests.conftest import engine_in_process
from tests.engine.test_async_scheduling import assert_same, outputs_of
from tests.engine.test_generate import make_llm, mixed_params, mixed_prompts


class ExplodingProcessor:
    """A logits processor that raises once ``after`` tokens were generated (a module-level
    class: it is pickled to the engine process)."""

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, output_ids: list[int], logits):
        if len(output_ids) >= self.after:
            raise RuntimeError("the processor exploded")
        return logits


def assert_blocks_free(llm) -> None:
    state = llm.llm_engine.kv_cache_state()  # checks the pool's integrity too
    assert state["num_free_blocks"] == state["num_blocks"]
    assert not state["quarantine_active"]


@pytest.mark.slow
def test_a_raising_logits_processor_fails_its_request_only(smollm):
    prompts = [f"Write one word about the number {i}." for i in range(8)]
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    alone = smollm.generate(prompts, greedy, use_tqdm=False)
    bad = SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True, logits_processors=[ExplodingProcessor(3)]
    )
    mixed = smollm.generate([*prompts, "Tell me a story."], [greedy] * 8 + [bad], use_tqdm=False)
    failed = mixed[8].outputs[0]
    assert failed.finish_reason == "error"
    assert len(failed.token_ids) == 3  # what it generated before its processor raised
    for before, after in zip(alone, mixed[:8], strict=True):
        assert after.outputs[0].token_ids == before.outputs[0].token_ids
        assert after.outputs[0].text == before.outputs[0].text
    assert_blocks_free(smollm)


@pytest.mark.slow
def test_a_processor_the_engine_process_cannot_import_fails_its_request_only(
    smollm, monkeypatch, tmp_path
):
    """A processor from a module on the user's path only (beside their script, run from
    elsewhere): the engine process cannot unpickle its samples; the request fails alone, and
    the engine serves on (it used to exit, failing every request then and later)."""
    (tmp_path / "user_processors.py").write_text("def keep(ids, logits):\n    return logits\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_processors

    try:
        prompts = [f"Write one word about the number {i}." for i in range(3)]
        greedy = SamplingParams(temperature=0.0, max_tokens=8)
        alone = smollm.generate(prompts, greedy, use_tqdm=False)
        bad = SamplingParams(n=2, max_tokens=8, logits_processors=[user_processors.keep])
        mixed = smollm.generate([*prompts, "Hello"], [greedy] * 3 + [bad], use_tqdm=False)
        assert [c.finish_reason for c in mixed[3].outputs] == ["error"] and mixed[3].finished
        for before, after in zip(alone, mixed[:3], strict=True):
            assert after.outputs[0].token_ids == before.outputs[0].token_ids
        again = smollm.generate(prompts, greedy, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in alone]
        assert_blocks_free(smollm)
    finally:
        del sys.modules["user_processors"]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_step_failing_after_launch_is_traced_to_its_request(
    tiny_models, monkeypatch, async_scheduling
):
    """The failure comes from inside the runner, after the forward pass was queued (with
    async scheduling, while the previous step is still in flight). The runner is patched
    here, so the engine core runs in this process."""
    with engine_in_process():
        llm = make_llm(tiny_models["llama"], async_scheduling=async_scheduling)
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(10, seed=3)]
    # Greedy rows (with penalties): a seeded row that shares a failed step restarts its
    # random stream there (its state is rebuilt), so only greedy rows replay exactly.
    params = [p for p in mixed_params(40) if p.temperature == 0.0][:10]
    expected = outputs_of(llm, prompts, params)
    poisoned = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, detokenize=False)
    sample = ModelRunner._sample

    def failing_sample(self, hidden, states, batch, metadata, mask):
        # The request of prompt [5, 6, 7] fails on its 5th token.
        if any(s.prompt_token_ids == [5, 6, 7] and len(s.output_token_ids) >= 4 for s in states):
            raise RuntimeError("sampling failed")
        return sample(self, hidden, states, batch, metadata, mask)

    monkeypatch.setattr(ModelRunner, "_sample", failing_sample)
    outputs = llm.generate(
        [*prompts, {"prompt_token_ids": [5, 6, 7]}], [*params, poisoned], use_tqdm=False
    )
    assert outputs[10].outputs[0].finish_reason == "error"
    rows = outputs_of_list(outputs[:10])
    assert_same(rows, expected)
    assert_blocks_free(llm)


def outputs_of_list(outputs) -> list[tuple]:
    return [(c.token_ids, c.finish_reason, c.stop_reason, None) for o in outputs for c in o.outputs]
