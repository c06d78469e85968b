"""Parity with Hugging Face transformers on identical weights (tiny random models)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pagedllm import LLM, SamplingParams
from tests.conftest import engine_in_process
from tests.model.helpers import prefill_logits

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
PROMPTS = [
    [5, 17, 99, 3, 250, 7, 8, 91, 23],
    [11] * 3,
    list(range(40, 77)),
    [300, 12],
    [(i * 37) % 380 + 3 for i in range(70)],
]


@pytest.fixture(scope="module")
def engines(tiny_models):
    built = {}
    for arch, path in tiny_models.items():
        with engine_in_process():  # prefill_logits drives the runner directly
            llm = LLM(
                model=str(path),
                skip_tokenizer_init=True,
                kv_cache_memory_bytes="16M",
                max_model_len=512,
                block_size=16,
            )
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        built[arch] = (llm, hf)
    return built


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_match_transformers(engines, arch):
    llm, hf = engines[arch]
    ours = prefill_logits(llm, PROMPTS)  # one ragged batch of five prompts
    for ids, logits in zip(PROMPTS, ours):
        expected = hf_logits(hf, ids)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_match_transformers(engines, arch):
    llm, hf = engines[arch]
    steps = 40
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    for ids, out in zip(PROMPTS, outputs):
        with torch.inference_mode():
            reference = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(ids) :].tolist()
        assert out.outputs[0].token_ids == reference, f"{arch}: prompt {ids[:4]}..."
