"""End to end through the offline LLM API: batching invariance, chunked prefill, prefix
caching, preemption, seeds, n > 1 — on a tiny random Llama (token ids, fast)."""

from __future__ import annotations

import contextlib
import random

import pytest

from pagedllm import LLM, SamplingParams
from tests.conftest import admission_forecast_off

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, detokenize=False)


def make_llm(path, **kwargs) -> LLM:
    kwargs.setdefault("kv_cache_memory_bytes", "16M")
    kwargs.setdefault("max_model_len", 512)
    return LLM(model=str(path), skip_tokenizer_init=True, **kwargs)


def mixed_prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 380) for _ in range(rng.randint(1, 120))] for _ in range(n)]


def mixed_params(n: int) -> list[SamplingParams]:
    """Greedy and seeded-sampling requests with different lengths and penalties."""
    params = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            params.append(
                SamplingParams(
                    temperature=0.0, max_tokens=8 + i % 13, ignore_eos=True, detokenize=False
                )
            )
        elif kind == 1:
            params.append(
                SamplingParams(
                    temperature=0.8,
                    top_p=0.9,
                    seed=100 + i,
                    max_tokens=16,
                    ignore_eos=True,
                    detokenize=False,
                )
            )
        elif kind == 2:
            params.append(
                SamplingParams(
                    temperature=0.0,
                    repetition_penalty=1.3,
                    presence_penalty=0.5,
                    frequency_penalty=0.4,
                    max_tokens=20,
                    ignore_eos=True,
                    detokenize=False,
                )
            )
        else:
            params.append(
                SamplingParams(
                    temperature=1.0,
                    top_k=20,
                    min_p=0.05,
                    seed=7 * i,
                    max_tokens=12,
                    ignore_eos=True,
                    detokenize=False,
                )
            )
    return params


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return make_llm(tiny_models["llama"])


def test_batch_equals_each_prompt_alone(llama):
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(36)]
    params = mixed_params(36)
    batched = token_ids(llama.generate(prompts, params, use_tqdm=False))
    alone = [token_ids(llama.generate(p, sp, use_tqdm=False))[0] for p, sp in zip(prompts, params)]
    assert batched == alone
    assert [len(t) for t in batched] == [sp.max_tokens for sp in params]


def test_outputs_come_back_in_prompt_order(llama):
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(10, seed=3)]
    outputs = llama.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == [p["prompt_token_ids"] for p in prompts]
    assert all(o.finished for o in outputs)
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)


def test_chunked_prefill_and_prefix_cache_give_same_tokens(tiny_models, llama):
    shared = mixed_prompts(1, seed=9)[0] * 3  # a long common prefix
    prompts = [{"prompt_token_ids": shared + tail} for tail in mixed_prompts(12, seed=4)]
    reference = token_ids(llama.generate(prompts, GREEDY, use_tqdm=False))
    chunked = make_llm(
        tiny_models["llama"], max_num_batched_tokens=32, max_num_seqs=8, enable_prefix_caching=False
    )
    assert token_ids(chunked.generate(prompts, GREEDY, use_tqdm=False)) == reference
    cached = make_llm(tiny_models["llama"], max_num_batched_tokens=48, enable_prefix_caching=True)
    cached.generate(prompts[:1], GREEDY, use_tqdm=False)  # warm the cache
    assert token_ids(cached.generate(prompts, GREEDY, use_tqdm=False)) == reference
    assert cached.generate(prompts[:1], GREEDY, use_tqdm=False)[0].num_cached_tokens > 0


def test_chunks_sized_by_the_step_time_give_same_tokens(tiny_models, llama):
    """A microsecond step time target: every prompt goes in chunks of its floor (256 tokens
    while the model measures, then 64), beside decodes, with and without cached prefixes."""
    shared = mixed_prompts(1, seed=9)[0] * 3
    prompts = [{"prompt_token_ids": shared + tail} for tail in mixed_prompts(12, seed=4)]
    reference = token_ids(llama.generate(prompts, GREEDY, use_tqdm=False))
    timed = make_llm(tiny_models["llama"], max_num_batched_tokens=512, step_time_target=1e-6)
    assert token_ids(timed.generate(prompts, GREEDY, use_tqdm=False)) == reference


@pytest.mark.parametrize("forecast", [False, True])
def test_tiny_kv_budget_keeps_results(tiny_models, llama, forecast):
    """Admitting freely, the budget forces preemptions; with the admission forecast (the
    default) these requests, which end by length only, run without one. Same tokens."""
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(24, seed=5)]
    params = mixed_params(24)
    reference = token_ids(llama.generate(prompts, params, use_tqdm=False))
    # 2 layers x 2 kv heads x 16 dims x 4 bytes x 2 = 512 bytes per token: 32 blocks of 16.
    with contextlib.nullcontext() if forecast else admission_forecast_off():
        tiny = make_llm(
            tiny_models["llama"], kv_cache_memory_bytes=512 * 16 * 32, max_model_len=256
        )
    assert token_ids(tiny.generate(prompts, params, use_tqdm=False)) == reference
    state = tiny.llm_engine.kv_cache_state()  # checks the pool's integrity too
    assert (state["num_preemptions"] == 0) == forecast
    assert state["num_free_blocks"] == state["num_blocks"]


def test_seeded_sampling_is_reproducible(llama):
    prompt = {"prompt_token_ids": [5, 6, 7, 8, 9]}
    params = SamplingParams(
        temperature=1.0, seed=1234, max_tokens=32, ignore_eos=True, detokenize=False
    )
    first = token_ids(llama.generate(prompt, params, use_tqdm=False))[0]
    crowd = [{"prompt_token_ids": p} for p in mixed_prompts(9, seed=11)]
    noisy = llama.generate([*crowd, prompt], [*mixed_params(9), params], use_tqdm=False)
    assert noisy[-1].outputs[0].token_ids == first
    other = SamplingParams(
        temperature=1.0, seed=4321, max_tokens=32, ignore_eos=True, detokenize=False
    )
    assert token_ids(llama.generate(prompt, other, use_tqdm=False))[0] != first


def test_n_parallel_samples(llama):
    prompt = {"prompt_token_ids": [9, 8, 7, 6]}
    params = SamplingParams(
        n=4, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True, detokenize=False
    )
    out = llama.generate(prompt, params, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert all(len(c.token_ids) == 10 for c in out.outputs)
    again = llama.generate(prompt, params, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    greedy = SamplingParams(n=3, temperature=0.0, max_tokens=6, ignore_eos=True, detokenize=False)
    same = llama.generate(prompt, greedy, use_tqdm=False)[0]
    assert len({tuple(c.token_ids) for c in same.outputs}) == 1


def test_stop_token_ids_and_min_tokens(llama):
    prompt = {"prompt_token_ids": [3, 4, 5]}
    free = token_ids(llama.generate(prompt, GREEDY, use_tqdm=False))[0]
    stop_id = free[5]
    first = free.index(stop_id)
    params = SamplingParams(
        temperature=0.0, max_tokens=24, ignore_eos=True, stop_token_ids=[stop_id], detokenize=False
    )
    out = llama.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == free[: first + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_id)
    held = SamplingParams(
        temperature=0.0,
        max_tokens=24,
        ignore_eos=True,
        stop_token_ids=[stop_id],
        min_tokens=first + 2,
        detokenize=False,
    )
    out = llama.generate(prompt, held, use_tqdm=False)[0].outputs[0]
    assert stop_id not in out.token_ids[: first + 2]
    assert len(out.token_ids) >= first + 2


def test_priority_policy_runs(tiny_models):
    llm = make_llm(tiny_models["llama"], scheduling_policy="priority", max_num_seqs=2)
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(6, seed=2)]
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False, priority=[5, 0, 3, 1, 4, 2])
    assert [o.prompt_token_ids for o in outputs] == [p["prompt_token_ids"] for p in prompts]


def test_a_deleted_engine_is_collected_with_the_library_heap_frozen(tiny_models):
    """The first engine freezes what exists before it (gc.freeze); engines themselves must
    stay collectable. In a fresh process, so this engine is the first."""
    import subprocess
    import sys

    script = f"""
import gc, weakref
from pagedllm import LLM
import os
os.environ["PAGEDLLM_ENABLE_MULTIPROCESSING"] = "0"  # the core is this process's object
llm = LLM(model={str(tiny_models["llama"])!r}, skip_tokenizer_init=True,
          kv_cache_memory_bytes="16M", max_model_len=512)
assert gc.get_freeze_count() > 0
llm.llm_engine.cycle = llm.llm_engine  # only the collector can free it now
core = weakref.ref(llm.llm_engine.engine_core)
del llm
gc.collect()
assert core() is None, "the engine core was not freed"
print("freed")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "freed" in done.stdout


def test_prompt_types_import_as_from_vllm(llama):
    from pagedllm import TextPrompt as TopLevel
    from pagedllm.inputs import TextPrompt, TokensPrompt

    assert TopLevel is TextPrompt
    greedy = SamplingParams(temperature=0, max_tokens=3, detokenize=False)
    typed = llama.generate(TokensPrompt(prompt_token_ids=[5, 6, 7]), greedy, use_tqdm=False)
    plain = llama.generate({"prompt_token_ids": [5, 6, 7]}, greedy, use_tqdm=False)
    assert token_ids(typed) == token_ids(plain)


def test_get_metrics_as_vllm(tiny_models, llama):
    from pagedllm.v1.metrics.reader import Counter, Gauge, Histogram

    llm = make_llm(tiny_models["llama"], disable_log_stats=False)
    llm.generate([{"prompt_token_ids": [5, 6, 7]}] * 2, GREEDY, use_tqdm=False)
    metrics = {m.name: m for m in llm.get_metrics() if not m.labels.get("finished_reason")}
    generated = metrics["pagedllm:generation_tokens"]
    assert isinstance(generated, Counter) and generated.value == 2 * GREEDY.max_tokens
    assert isinstance(metrics["pagedllm:num_requests_running"], Gauge)
    ttft = metrics["pagedllm:time_to_first_token_seconds"]
    assert isinstance(ttft, Histogram) and ttft.count == 2 == ttft.buckets["+Inf"]
    with pytest.raises(ValueError, match="disable_log_stats=False"):
        llama.get_metrics()  # the module's engine: built with the default, stats off


def test_a_long_cache_salt_is_refused(llama):
    from pagedllm.inputs.prompts import MAX_CACHE_SALT

    prompt = {"prompt_token_ids": [5, 6, 7], "cache_salt": "s" * (MAX_CACHE_SALT + 1)}
    with pytest.raises(ValueError, match="cache_salt is 1025 characters; at most 1024"):
        llama.generate(prompt, GREEDY, use_tqdm=False)
    assert token_ids(llama.generate({**prompt, "cache_salt": "s"}, GREEDY, use_tqdm=False))


def test_a_priority_under_first_come_first_served_is_refused(tiny_models):
    llm = make_llm(tiny_models["llama"])
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(2, seed=2)]
    with pytest.raises(ValueError, match="priority=3 needs priority scheduling"):
        llm.generate(prompts, GREEDY, use_tqdm=False, priority=[0, 3])
    assert len(llm.generate(prompts, GREEDY, use_tqdm=False, priority=[0, 0])) == 2
