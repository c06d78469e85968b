"""Structured outputs on CUDA: the pinned host bitmask, its copy to the device and
xgrammar's Triton apply kernel, with CUDA graphs and without. A tiny random model with a
one-token-per-character tokenizer: whatever the weights, the grammar must hold."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import StructuredOutputsParams
from tests.conftest import save_char_tokenizer
from tests.gpu.conftest import gpu_config

# Every string and number is bounded, so each output ends well inside max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
PROMPTS = ["Person: ", "Give one person as JSON.", "x" * 150, "{"]


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpu_chars") / "llama"
    AutoModelForCausalLM.from_config(gpu_config("llama"), dtype=torch.float32).save_pretrained(path)
    return save_char_tokenizer(path)


def engine(path, **kw) -> LLM:
    return LLM(model=str(path), dtype="bfloat16", max_model_len=1024,
               kv_cache_memory_bytes="256M", **kw)  # fmt: skip


def constrained(**kw) -> SamplingParams:
    so = StructuredOutputsParams(**kw, disable_any_whitespace=bool(kw.get("json")))
    return SamplingParams(temperature=1.0, seed=7, max_tokens=200, n=3, structured_outputs=so)


@pytest.mark.parametrize("enforce_eager", [False, True])
def test_json_regex_and_choice_hold_on_cuda(char_model, enforce_eager: bool) -> None:
    llm = engine(char_model, enforce_eager=enforce_eager)
    for out in llm.generate(PROMPTS, constrained(json=SCHEMA), use_tqdm=False):
        for sample in out.outputs:
            assert sample.finish_reason == "stop"
            jsonschema.validate(json.loads(sample.text), SCHEMA)
    pattern = r"[a-z]{2,5}-\d{2,4}"
    for out in llm.generate(PROMPTS, constrained(regex=pattern), use_tqdm=False):
        assert all(re.fullmatch(pattern, s.text) for s in out.outputs)
    for out in llm.generate(PROMPTS, constrained(choice=["yes", "no", "maybe"]), use_tqdm=False):
        assert {s.text for s in out.outputs} <= {"yes", "no", "maybe"}


def test_graphs_and_eager_pick_the_same_constrained_tokens(char_model) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=200,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA))  # fmt: skip
    mixed = [params, SamplingParams(temperature=0.0, max_tokens=40)] * 2  # constrained and free
    runs = []
    for enforce_eager in (True, False):
        llm = engine(char_model, enforce_eager=enforce_eager)
        runs.append([o.outputs[0].token_ids for o in llm.generate(PROMPTS, mixed, use_tqdm=False)])
    assert runs[0] == runs[1]
