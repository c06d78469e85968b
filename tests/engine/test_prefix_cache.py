"""Prefix caching: identical greedy outputs with the cache on and off, real reuse, salts,
and block-pool integrity under churn."""

from __future__ import annotations

import random

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.engine.llm_engine import LLMEngine
from tests.conftest import engine_in_process

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, detokenize=False)


def tiny(path, caching: bool, **kwargs) -> LLM:
    kwargs.setdefault("kv_cache_memory_bytes", "8M")
    kwargs.setdefault("max_model_len", 512)
    return LLM(model=str(path), skip_tokenizer_init=True, enable_prefix_caching=caching, **kwargs)


def run(llm: LLM, prompts: list[list[int]], params: SamplingParams = GREEDY) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def reference(path, **kwargs) -> LLM:
    """The engine without the cache that the cached one is checked against, its core in this
    process (the engine under test keeps the default, its own process): starting a process
    costs ~5 s, and what the reference computes does not depend on where it runs."""
    with engine_in_process():
        return tiny(path, False, **kwargs)


@pytest.fixture(scope="module")
def pair(tiny_models):
    return tiny(tiny_models["qwen3"], True), reference(tiny_models["qwen3"])


def rand_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 380) for _ in range(n)]


def test_shared_system_prompt(pair):
    rng = random.Random(0)
    system = rand_ids(rng, 150)
    prompts = [system + rand_ids(rng, rng.randint(1, 40)) for _ in range(24)]
    cached, plain = pair
    first = run(cached, prompts)
    assert first == run(plain, prompts)
    again = cached.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == first
    assert all(o.num_cached_tokens >= 144 for o in again)  # 9 whole blocks of the system prompt


def test_mid_block_and_exact_prefixes(pair):
    rng = random.Random(1)
    base = rand_ids(rng, 70)
    prompts = [base[:n] for n in (1, 15, 16, 17, 31, 32, 33, 48, 70)]  # prefixes of each other
    prompts += [base[:37] + rand_ids(rng, 9), base[:37] + rand_ids(rng, 3)]  # diverge mid-block
    cached, plain = pair
    for _ in range(2):  # second round runs entirely on cached prefixes
        assert run(cached, prompts) == run(plain, prompts)


def test_multi_turn_conversation_token_ids(pair):
    rng = random.Random(2)
    cached, plain = pair
    history_c, history_p = rand_ids(rng, 40), None
    history_p = list(history_c)
    for _ in range(10):
        user = rand_ids(rng, rng.randint(3, 20))
        history_c += user
        history_p += user
        reply_c, reply_p = run(cached, [history_c])[0], run(plain, [history_p])[0]
        assert reply_c == reply_p
        history_c += reply_c
        history_p += reply_p
    last = cached.generate({"prompt_token_ids": history_c}, GREEDY, use_tqdm=False)[0]
    assert last.num_cached_tokens >= len(history_c) - 16 - 1


def test_arrivals_while_the_same_prefix_is_prefilling(tiny_models):
    rng = random.Random(3)
    shared = rand_ids(rng, 200)
    prompts = [shared + rand_ids(rng, 5) for _ in range(6)]
    expected = run(reference(tiny_models["qwen3"]), prompts)
    llm = tiny(tiny_models["qwen3"], True, max_num_batched_tokens=48, max_num_seqs=8)
    engine: LLMEngine = llm.llm_engine
    results: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, GREEDY)
        for _ in range(2):  # a couple of 48-token steps: the earlier ones are mid-prefill
            for out in engine.step():
                if out.finished:
                    results[out.request_id] = out.outputs[0].token_ids
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.outputs[0].token_ids
    assert [results[str(i)] for i in range(len(prompts))] == expected


def test_cache_salt_keeps_tenants_apart(pair):
    cached, _ = pair
    rng = random.Random(4)
    prompt = rand_ids(rng, 64)
    a1 = cached.generate(
        {"prompt_token_ids": prompt, "cache_salt": "tenant-a"}, GREEDY, use_tqdm=False
    )[0]
    a2 = cached.generate(
        {"prompt_token_ids": prompt, "cache_salt": "tenant-a"}, GREEDY, use_tqdm=False
    )[0]
    b = cached.generate(
        {"prompt_token_ids": prompt, "cache_salt": "tenant-b"}, GREEDY, use_tqdm=False
    )[0]
    plain = cached.generate({"prompt_token_ids": prompt}, GREEDY, use_tqdm=False)[0]
    assert a2.num_cached_tokens == 48 and b.num_cached_tokens == 0 and plain.num_cached_tokens == 0
    assert a1.outputs[0].token_ids == a2.outputs[0].token_ids == b.outputs[0].token_ids


def test_reset_prefix_cache(pair):
    cached, _ = pair
    prompt = {"prompt_token_ids": list(range(10, 60))}
    cached.generate(prompt, GREEDY, use_tqdm=False)
    assert cached.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 48
    assert cached.reset_prefix_cache()
    assert cached.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 0


@pytest.mark.usefixtures("admit_freely")
def test_churn_keeps_the_pool_consistent(tiny_models):
    """Thousands of random requests, a tiny KV budget, heavy sharing, random aborts. The
    pool is checked after every step, so the core runs in this process."""
    rng = random.Random(5)
    with engine_in_process():
        llm = tiny(tiny_models["llama"], True, kv_cache_memory_bytes=512 * 16 * 48,
                   max_model_len=256, max_num_batched_tokens=96, max_num_seqs=16)  # fmt: skip
    engine = llm.llm_engine
    pool = engine.engine_core.kv_cache_manager.block_pool
    prefixes = [rand_ids(rng, rng.randint(10, 120)) for _ in range(6)]
    submitted = finished = cache_hits = 0
    live: set[str] = set()
    while submitted < 2000 or engine.has_unfinished_requests():
        for _ in range(min(rng.randint(0, 6), 2000 - submitted)):
            prompt = rng.choice(prefixes)[: rng.randint(1, 120)] + rand_ids(rng, rng.randint(0, 12))
            params = SamplingParams(
                temperature=rng.choice([0.0, 1.0]),
                max_tokens=rng.randint(1, 24),
                ignore_eos=True,
                detokenize=False,
                seed=rng.randint(0, 9),
            )
            engine.add_request(f"r{submitted}", {"prompt_token_ids": prompt}, params)
            live.add(f"r{submitted}")
            submitted += 1
        if live and rng.random() < 0.05:
            victim = rng.choice(sorted(live))
            engine.abort_request(victim)
            live.discard(victim)
        for out in engine.step():
            if out.finished:
                finished += 1
                cache_hits += bool(out.num_cached_tokens)
                live.discard(out.request_id)
        pool.check_integrity()
    assert submitted == 2000 and finished > 1800
    assert pool.get_num_free_blocks() == pool.num_blocks
    assert engine.engine_core.scheduler.num_preemptions > 0
    assert cache_hits > 0


def test_multi_turn_chat_with_smollm(smollm, tmp_path):
    """A 6-turn chat (the users' "incremental computation"): same replies, cache on or off,
    and each turn from the third reuses more of the history than the one before."""
    with engine_in_process():  # the reference, as in reference() above
        plain = LLM(kv_cache_memory_bytes="96M", max_model_len=2048, enable_prefix_caching=False)
    messages_c = [{"role": "system", "content": "You are a concise assistant."}]
    messages_p = list(messages_c)
    params = SamplingParams(temperature=0.0, max_tokens=20)
    cached_tokens = []
    for turn in range(6):
        question = {
            "role": "user",
            "content": f"Give me one short fact about the number {turn + 2}.",
        }
        messages_c.append(question)
        messages_p.append(question)
        out_c = smollm.chat(messages_c, params, use_tqdm=False)[0]
        out_p = plain.chat(messages_p, params, use_tqdm=False)[0]
        assert out_c.outputs[0].text == out_p.outputs[0].text
        cached_tokens.append(out_c.num_cached_tokens)
        messages_c.append({"role": "assistant", "content": out_c.outputs[0].text})
        messages_p.append({"role": "assistant", "content": out_p.outputs[0].text})
    assert all(cached_tokens[t] > cached_tokens[t - 1] for t in range(2, 6))
