"""The engine on CUDA against transformers on the same random weights; CUDA graphs against
eager; prefix-cached and chunked prefills against plain ones; KV sizing by GPU memory."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from pagedllm import LLM, SamplingParams

ARCHS = ["llama", "qwen2", "qwen3"]


def prompts(seed: int, n: int = 9) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 500) for _ in range(rng.randint(1, 150))] for _ in range(n)]


def engine(path, dtype="float32", **kw) -> LLM:
    kw.setdefault("kv_cache_memory_bytes", "256M")
    return LLM(model=str(path), skip_tokenizer_init=True, dtype=dtype, max_model_len=1024, **kw)


def greedy(llm, batch, steps=64):
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers_float32(gpu_models, arch):
    batch = prompts(1)
    ours = greedy(engine(gpu_models[arch]), batch)
    hf = AutoModelForCausalLM.from_pretrained(gpu_models[arch], dtype=torch.float32).cuda().eval()
    for ids, tokens in zip(batch, ours):
        with torch.inference_mode():
            ref = hf.generate(
                torch.tensor([ids], device="cuda"), max_new_tokens=64, min_new_tokens=64,
                do_sample=False, eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
        assert tokens == ref[0, len(ids) :].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_logits_close(gpu_models, arch):
    from tests.model.helpers import prefill_logits

    llm = engine(gpu_models[arch], dtype="bfloat16")
    hf = AutoModelForCausalLM.from_pretrained(gpu_models[arch], dtype=torch.bfloat16).cuda().eval()
    batch = prompts(2, 5)
    for ids, logits in zip(batch, prefill_logits(llm, batch)):
        with torch.inference_mode():
            ref = hf(torch.tensor([ids], device="cuda")).logits[0].float()
        error = ((logits.float() - ref).norm() / ref.norm()).item()
        assert error < 3e-2, error


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_graphs_replay_like_eager(gpu_models, arch):
    batch = prompts(3, 12)
    eager = engine(gpu_models[arch], dtype="bfloat16", enforce_eager=True)
    graphs = engine(gpu_models[arch], dtype="bfloat16")
    assert greedy(graphs, batch, 32) == greedy(eager, batch, 32)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_and_prefix_cached_prefills_agree(gpu_models, arch):
    """float32: a chunked prefill multiplies different matrix shapes than a whole one, and in
    bfloat16 those roundings alone can flip a random model's greedy choice."""
    shared = [prompts(4, 1)[0] * 2 + p for p in prompts(3, 12)]  # a long common prefix
    plain = engine(gpu_models[arch], enforce_eager=True, enable_prefix_caching=False)
    chunked = engine(gpu_models[arch], max_num_batched_tokens=64, enable_prefix_caching=False)
    cached = engine(gpu_models[arch])
    reference = greedy(plain, shared, 32)
    assert greedy(chunked, shared, 32) == reference
    greedy(cached, shared[:1], 4)
    assert greedy(cached, shared, 32) == reference


def test_kv_cache_sized_from_gpu_memory(gpu_models):
    llm = LLM(model=str(gpu_models["qwen3"]), skip_tokenizer_init=True, gpu_memory_utilization=0.3,
              max_model_len=1024)  # fmt: skip
    plan = llm.llm_engine.engine_core.kv_cache_plan
    total = torch.cuda.get_device_properties(0).total_memory
    assert 0.1 * total < plan.num_bytes < 0.3 * total
    assert greedy(llm, prompts(5, 3), 8)


def test_too_long_max_model_len_names_gpu_figures(gpu_models, tmp_path):
    import json

    config = json.loads((gpu_models["qwen3"] / "config.json").read_text())
    config["max_position_embeddings"] = 10**7
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"gpu_memory_utilization=0.05 of .*largest max_model_len"):
        LLM(model=str(tmp_path), load_format="dummy", skip_tokenizer_init=True,
            gpu_memory_utilization=0.05, max_model_len=10**7)  # fmt: skip


@pytest.mark.usefixtures("admit_freely")  # the tight budget must preempt
def test_async_scheduling_matches_synchronous_steps(gpu_models):
    """Graph replays whose decode inputs come from the previous step's sampled ids on the
    device: the same tokens, logprobs and finishes as synchronous steps (float32, seeded
    sampling, eos and stop ids found one step late, one-token requests, a tight KV budget
    that preempts)."""
    batch = prompts(7, 40)
    params = [
        SamplingParams(temperature=[0.0, 1.0][i % 2], seed=i, max_tokens=[1, 40, 17][i % 3],
                       logprobs=2 if i % 5 == 0 else None, stop_token_ids=[7, 11, 13],
                       detokenize=False)
        for i in range(len(batch))
    ]  # fmt: skip

    def run(llm):
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        return [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]

    sync = engine(gpu_models["qwen3"], async_scheduling=False)
    reference = run(sync)
    ahead = engine(gpu_models["qwen3"], async_scheduling=True)
    assert run(ahead) == reference
    tight = engine(gpu_models["qwen3"], async_scheduling=True, kv_cache_memory_bytes="5M")
    assert run(tight) == reference
    assert tight.llm_engine.engine_core.scheduler.num_preemptions > 0


def test_engine_core_process_matches_in_process(gpu_models, monkeypatch):
    """The default deployment (the core in its own process, CUDA graphs, async scheduling)
    gives the tokens of an in-process core."""
    batch = prompts(7, 24)
    expected = greedy(engine(gpu_models["llama"]), batch)  # float32: no bf16 near-ties
    monkeypatch.setenv("PAGEDLLM_ENABLE_MULTIPROCESSING", "1")
    separate = engine(gpu_models["llama"])
    assert greedy(separate, batch) == expected
    state = separate.llm_engine.kv_cache_state()
    assert state["num_free_blocks"] == state["num_blocks"]
    separate.llm_engine.shutdown()


def test_split_kv_prefill_chunks_agree(gpu_models, monkeypatch):
    """Eager prefill chunks after cached prefixes, each program's keys split in four
    (``prefill_segments``' threshold lowered to reach this model's contexts), give the
    unsplit run's tokens (float32)."""
    from pagedllm.kernels import paged_attention as pa

    shared = [prompts(4, 1)[0] * 4 + p for p in prompts(5, 6)]
    kw = {"enforce_eager": True, "max_num_batched_tokens": 96}
    reference = greedy(engine(gpu_models["qwen3"], **kw), shared, 16)
    chosen: list[int] = []
    real = pa.prefill_segments
    monkeypatch.setattr(pa, "MIN_PREFILL_SEGMENT_KEYS", 32)
    monkeypatch.setattr(pa, "prefill_segments", lambda *a: chosen.append(real(*a)) or chosen[-1])
    assert greedy(engine(gpu_models["qwen3"], **kw), shared, 16) == reference
    assert 4 in chosen and 1 in chosen  # split chunks, and a first chunk too short to split
