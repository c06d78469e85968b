"""Decode steps with every layer in C++ (``model/cpu_decode.py``) against the same engine
running its layers' modules: the bundled SmolLM2 (GGUF Q4_1 as stored), greedy, with
logprobs, one stream and several at once (ragged contexts across blocks)."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.model.cpu_decode import CpuDecodeStack
from tests.conftest import engine_in_process

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land"]


@pytest.fixture(scope="module")
def llm():
    with engine_in_process():
        return LLM(dtype="float32", kv_cache_memory_bytes="32M", max_model_len=512)


def run(llm: LLM, prompts: list[str]) -> list:
    params = SamplingParams(temperature=0, max_tokens=40, logprobs=2, ignore_eos=True)
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one", "three"])
def test_the_cpp_layers_decode_as_the_modules_do(llm, prompts, monkeypatch):
    decoder = llm.llm_engine.engine_core.runner.model.model
    assert isinstance(decoder.cpu_decode, CpuDecodeStack)
    steps = []
    monkeypatch.setattr(decoder.cpu_decode, "run", lambda *a, _run=decoder.cpu_decode.run: (
        steps.append(1), _run(*a))[1])  # fmt: skip
    fused = run(llm, prompts)
    assert len(steps) == 39  # every step after the prompts' prefill
    stack, decoder.cpu_decode = decoder.cpu_decode, None
    try:
        modules = run(llm, prompts)
    finally:
        decoder.cpu_decode = stack
    for a, b in zip(fused, modules):
        assert a.token_ids == b.token_ids
        for pa, pb in zip(a.logprobs, b.logprobs):
            assert pa.keys() == pb.keys()
            for token in pa:
                assert pa[token].logprob == pytest.approx(pb[token].logprob, abs=1e-4)
