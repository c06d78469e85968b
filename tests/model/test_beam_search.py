"""Beam search against transformers' beam search on a tiny random model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from pagedllm import LLM, BeamSearchParams

PROMPTS = [[5, 17, 99, 3, 250, 7], [11, 12], list(range(40, 70))]


@pytest.fixture(scope="module")
def models(tiny_models) -> tuple[LLM, PreTrainedModel]:
    """The engine and the transformers model on the same weights, for both beam widths."""
    path = tiny_models["qwen2"]
    llm = LLM(
        model=str(path), skip_tokenizer_init=True, kv_cache_memory_bytes="16M", max_model_len=256
    )
    return llm, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("beam_width", [2, 4])
def test_same_beams_and_scores_as_transformers(models, beam_width):
    llm, hf = models
    assert llm.reset_prefix_cache()  # as a new engine: the other width's prompts not cached
    steps = 8
    ours = llm.beam_search(
        [{"prompt_token_ids": p} for p in PROMPTS],
        BeamSearchParams(beam_width=beam_width, max_tokens=steps, ignore_eos=True),
    )
    for prompt, output in zip(PROMPTS, ours):
        with torch.inference_mode():
            reference = hf.generate(
                torch.tensor([prompt]),
                num_beams=beam_width,
                num_return_sequences=beam_width,
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                early_stopping=False,
                length_penalty=1.0,
                eos_token_id=None,
                pad_token_id=0,
                output_scores=True,
                return_dict_in_generate=True,
            )
        hf_beams = [seq[len(prompt) :].tolist() for seq in reference.sequences]
        hf_scores = (reference.sequences_scores * steps).tolist()  # sum of logprobs
        assert [beam.generated for beam in output.sequences] == hf_beams
        ours_scores = [beam.cum_logprob for beam in output.sequences]
        assert ours_scores == pytest.approx(hf_scores, abs=1e-3)
        assert all(beam.finish_reason == "length" for beam in output.sequences)
    state = llm.llm_engine.kv_cache_state()
    assert state["num_free_blocks"] == state["num_blocks"]
