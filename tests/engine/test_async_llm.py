"""AsyncLLM: streaming output kinds, batching of concurrent requests, aborts, cancellation,
and the users' example script (../shared/seeds/004), on SmolLM2's tokenizer and template
with 2-layer random weights: the script checks the API it calls, not the text, and three
100-token samples of the real weights cost ~15 s more."""

from __future__ import annotations

import asyncio

import pytest

from pagedllm import AsyncEngineArgs, AsyncLLM, RequestOutputKind, SamplingParams
from pagedllm.engine.async_llm import MAX_UNREAD_OUTPUTS
from tests.engine.conftest import run_seed


@pytest.fixture(scope="module")
def engine(tiny_models):
    args = AsyncEngineArgs(
        model=str(tiny_models["llama"]),
        skip_tokenizer_init=True,
        kv_cache_memory_bytes="16M",
        max_model_len=512,
        disable_log_stats=True,
    )
    llm = AsyncLLM.from_engine_args(args)
    yield llm
    llm.shutdown()


def params(kind: RequestOutputKind, n_tokens: int = 12, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True, detokenize=False,
                          output_kind=kind, **kw)  # fmt: skip


async def collect(engine, prompt, sp, request_id):
    return [out async for out in engine.generate(prompt, sp, request_id)]


def core_state(engine) -> dict:
    """The engine core's block pool (checked), after everything sent so far."""
    return asyncio.run(engine.call(lambda e: e.kv_cache_state()))


def kv_in_use(engine) -> int:
    state = core_state(engine)
    return state["num_blocks"] - state["num_free_blocks"]


async def settle(engine) -> None:
    """Wait until the engine thread has processed everything (aborts included)."""
    await engine.call(lambda e: None)


def test_output_kinds(engine):
    prompt = {"prompt_token_ids": [3, 4, 5, 6]}

    async def go():
        delta = await collect(engine, prompt, params(RequestOutputKind.DELTA), "d")
        cumulative = await collect(engine, prompt, params(RequestOutputKind.CUMULATIVE), "c")
        final = await collect(engine, prompt, params(RequestOutputKind.FINAL_ONLY), "f")
        return delta, cumulative, final

    delta, cumulative, final = asyncio.run(go())
    tokens = final[-1].outputs[0].token_ids
    assert len(final) == 1 and final[0].finished and len(tokens) == 12
    assert [t for o in delta for t in o.outputs[0].token_ids] == tokens
    assert all(len(o.outputs[0].token_ids) == 1 for o in delta)
    assert [len(o.outputs[0].token_ids) for o in cumulative] == list(range(1, 13))
    assert cumulative[-1].outputs[0].token_ids == tokens


@pytest.mark.parametrize("kind", [RequestOutputKind.DELTA, RequestOutputKind.CUMULATIVE])
def test_a_slow_reader_holds_a_bounded_number_of_outputs(engine, kind):
    """A reader that stops reading finds at most MAX_UNREAD_OUTPUTS outputs waiting,
    whatever the steps since, the last holding the rest merged (the stream's memory does
    not grow with a stalled client), and every token is there."""
    prompt = {"prompt_token_ids": [3, 4, 5, 6]}

    async def go():
        full = await collect(engine, prompt, params(RequestOutputKind.FINAL_ONLY, 40), "ref")
        stream = engine.generate(prompt, params(kind, 40, n=2, logprobs=1), "slow")  # 80 steps
        first = await stream.__anext__()
        while await engine.call(lambda e: e.has_unfinished_requests()):
            await asyncio.sleep(0.01)
        rest = [out async for out in stream]
        return full[-1], first, rest

    full, first, rest = asyncio.run(go())
    assert len(rest) == MAX_UNREAD_OUTPUTS and rest[-1].finished
    for index in (0, 1):
        samples = [c for o in [first, *rest] for c in o.outputs if c.index == index]
        assert samples[-1].finish_reason == "length"
        if kind == RequestOutputKind.DELTA:
            ids = [t for c in samples for t in c.token_ids]
            assert sum(len(c.logprobs) for c in samples) == len(ids)
        else:
            ids = samples[-1].token_ids
        assert ids == full.outputs[0].token_ids  # greedy: both samples the same
    assert kv_in_use(engine) == 0


def test_concurrent_requests_share_steps(engine):
    prompts = [{"prompt_token_ids": [i + 3] * (i + 2)} for i in range(8)]

    async def go():
        return await asyncio.gather(*(
            collect(engine, p, params(RequestOutputKind.FINAL_ONLY, 30), f"conc-{i}")
            for i, p in enumerate(prompts)
        ))  # fmt: skip

    steps_before = core_state(engine)["num_preemptions"]
    results = asyncio.run(go())
    assert all(r[-1].outputs[0].token_ids for r in results)
    assert core_state(engine)["num_preemptions"] == steps_before
    # Batched: far fewer engine steps than 8 requests x 30 tokens would take one by one.
    alone = asyncio.run(
        collect(engine, prompts[3], params(RequestOutputKind.FINAL_ONLY, 30), "alone")
    )
    assert alone[-1].outputs[0].token_ids == results[3][-1].outputs[0].token_ids


def test_duplicate_live_request_id_is_an_error(engine):
    async def go():
        first = engine.generate(
            {"prompt_token_ids": [5, 6]}, params(RequestOutputKind.DELTA, 200), "dup"
        )
        await first.__anext__()
        with pytest.raises(ValueError, match="already running"):
            engine.generate({"prompt_token_ids": [7]}, params(RequestOutputKind.DELTA), "dup")
        await first.aclose()
        await settle(engine)

    asyncio.run(go())
    assert kv_in_use(engine) == 0


def test_abort_ends_the_stream_and_frees_blocks(engine):
    async def go():
        outputs = []
        async for out in engine.generate(
            {"prompt_token_ids": [8, 9]}, params(RequestOutputKind.DELTA, 400), "ab"
        ):
            outputs.append(out)
            if len(outputs) == 3:
                await engine.abort("ab")
        await settle(engine)
        return outputs

    outputs = asyncio.run(go())
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "abort"
    assert kv_in_use(engine) == 0


def test_break_and_cancel_free_blocks(engine):
    async def breaker():
        async for _ in engine.generate(
            {"prompt_token_ids": [4, 4]}, params(RequestOutputKind.DELTA, 400), "brk"
        ):
            break
        await asyncio.sleep(0.05)
        await settle(engine)

    async def canceller():
        async def consume():
            async for _ in engine.generate(
                {"prompt_token_ids": [6, 6]}, params(RequestOutputKind.DELTA, 400), "cnl"
            ):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(engine)

    asyncio.run(breaker())
    assert kv_in_use(engine) == 0
    asyncio.run(canceller())
    assert kv_in_use(engine) == 0
    assert not engine.engine.has_unfinished_requests()


def test_bad_input_raises_at_the_call(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate({"prompt_token_ids": []}, params(RequestOutputKind.DELTA), "bad")
    with pytest.raises(ValueError, match="lora_request"):
        engine.generate(
            {"prompt_token_ids": [1]}, params(RequestOutputKind.DELTA), "bad", lora_request=object()
        )
    # The id first (seed 004's slip): named, not "unhashable type: 'SamplingParams'".
    with pytest.raises(ValueError, match=r"request_id must be a str, got SamplingParams"):
        engine.generate("req-1", {"prompt_token_ids": [1]}, params(RequestOutputKind.DELTA))


def test_shutdown_stops_new_requests(tiny_models):
    args = AsyncEngineArgs(
        model=str(tiny_models["qwen2"]),
        skip_tokenizer_init=True,
        kv_cache_memory_bytes="8M",
        max_model_len=256,
    )
    llm = AsyncLLM.from_engine_args(args)
    llm.shutdown()
    assert not llm.is_running
    with pytest.raises(RuntimeError, match="not running"):
        llm.generate({"prompt_token_ids": [1]}, params(RequestOutputKind.DELTA), "late")


def test_seed_004_script_runs_unchanged_but_for_imports_and_model(tiny_smollm_dir, tmp_path):
    stdout = run_seed("async_llm_streaming.py", tiny_smollm_dir, tmp_path)
    assert stdout.count("Generation complete!") == 3
    assert "All streaming examples completed!" in stdout


def test_abort_ends_every_sample_of_a_streamed_request(engine):
    """An aborted n=2 stream shows finish_reason "abort" for both samples, and ends."""

    async def go():
        finish: dict[int, str | None] = {}
        count = 0
        async for out in engine.generate(
            {"prompt_token_ids": [3, 4, 5]}, params(RequestOutputKind.DELTA, 400, n=2), "ab2"
        ):
            for completion in out.outputs:
                finish[completion.index] = completion.finish_reason
            count += 1
            if count == 4:
                await engine.abort("ab2")
        await settle(engine)
        return finish, out.finished

    finish, finished = asyncio.run(go())
    assert finish == {0: "abort", 1: "abort"} and finished
    assert kv_in_use(engine) == 0
