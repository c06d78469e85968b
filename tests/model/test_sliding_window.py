"""Sliding-window attention (Mistral-7B-v0.1's 4096-token window, here 8) against
transformers on identical weights: prompts and generations far past the window, in one
chunk or many, with the prefix cache; and each layer's window as transformers reads it."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from pagedllm import LLM, SamplingParams
from pagedllm.model.decoder import sliding_windows
from tests.conftest import engine_in_process, tiny_config
from tests.model.helpers import prefill_logits

WINDOW = 8
PROMPTS = [list(range(40, 77)), [(i * 37) % 380 + 3 for i in range(70)], [5, 17, 99, 3, 9]]


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    config = tiny_config("mistral")
    config.sliding_window = WINDOW
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = tmp_path_factory.mktemp("window") / "mistral"
    model.save_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return path, hf.eval()


def engine(path, **kwargs) -> LLM:
    with engine_in_process():  # prefill_logits drives the runner directly
        return LLM(model=str(path), skip_tokenizer_init=True, kv_cache_memory_bytes="16M",
                   max_model_len=512, block_size=16, **kwargs)  # fmt: skip


def hf_greedy(hf, ids: list[int], steps: int) -> list[int]:
    with torch.inference_mode():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=steps, min_new_tokens=steps,
                          do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
    return out[0, len(ids) :].tolist()


def test_prefill_logits_match_transformers_past_the_window(windowed):
    path, hf = windowed
    for ids, logits in zip(PROMPTS, prefill_logits(engine(path), PROMPTS)):
        with torch.inference_mode():
            expected = hf(torch.tensor([ids])).logits[0].float()
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [None, 16])
def test_greedy_generation_matches_transformers(windowed, chunk):
    """Decodes at positions up to 110 see only their last 8 keys; with 16-token chunks a
    prompt's later chunks read their window from the cache."""
    path, hf = windowed
    kwargs = {} if chunk is None else {"max_num_batched_tokens": chunk, "max_num_seqs": 4}
    llm = engine(path, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, detokenize=False)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    for _ in range(2):  # the second time, prompts hit the prefix cache
        outputs = llm.generate(prompts, params, use_tqdm=False)
        for ids, out in zip(PROMPTS, outputs):
            assert out.outputs[0].token_ids == hf_greedy(hf, ids, 40), ids[:4]


def test_the_window_does_not_cap_the_context(windowed):
    path, _ = windowed
    assert engine(path).llm_engine.model_config.max_model_len == 512


def test_each_layers_window_as_transformers_reads_the_config():
    mistral = tiny_config("mistral")
    mistral.sliding_window = 4096
    assert sliding_windows(mistral) == (4096, 4096)
    mistral.sliding_window = None
    assert sliding_windows(mistral) == ()
    qwen = transformers.Qwen2Config(num_hidden_layers=4, sliding_window=64,
                                    use_sliding_window=True, max_window_layers=2)  # fmt: skip
    expected = tuple(64 if t == "sliding_attention" else None for t in qwen.layer_types)
    assert sliding_windows(qwen) == expected and None in expected and 64 in expected
    qwen.use_sliding_window = False
    assert sliding_windows(qwen) == ()
