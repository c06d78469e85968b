"""The bundled SmolLM2 (GGUF; on the CPU its Q4_1 / Q8_0 blocks computed on as stored) against
transformers loading the same file (dequantized to float32)."""

from __future__ import annotations

import pytest
import torch

from pagedllm import SamplingParams
from pagedllm.model_files import bundled_gguf_path
from tests.model.helpers import prefill_logits

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Give me three tips for learning to cook."},
    ],
    [{"role": "user", "content": "请用中文介绍一下你自己。"}],
]


@pytest.fixture(scope="module")
def hf_smollm():
    import functools

    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = bundled_gguf_path()
    kwargs = {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    # transformers asks gguf for the (architecture, layers) -> tensor names table once per
    # submodule, ~400 times at ~13 ms each; the table is a function of its arguments only
    # (transformers reads it), so it is built once. The weights loaded are the same.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    return tokenizer, model.eval()


def test_weights_and_logits_match_transformers(smollm_in_process, hf_smollm):
    tokenizer, model = hf_smollm
    text = tokenizer.apply_chat_template(
        CONVERSATIONS[1], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    ours = prefill_logits(smollm_in_process, [ids])[0]
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-3)


def test_greedy_chat_reply_matches_transformers(smollm, hf_smollm):
    tokenizer, model = hf_smollm
    params = SamplingParams(temperature=0.0, max_tokens=48)
    outputs = smollm.chat(CONVERSATIONS, params, use_tqdm=False)
    for conversation, out in zip(CONVERSATIONS, outputs):
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert out.prompt_token_ids == ids
        with torch.inference_mode():
            generated = model.generate(
                torch.tensor([ids]), max_new_tokens=48, do_sample=False, pad_token_id=2
            )[0, len(ids) :].tolist()
        assert out.outputs[0].token_ids == generated
        # A reply cut by max_tokens may end inside a multi-byte character: transformers shows
        # U+FFFD for the partial bytes, the incremental detokenizer holds them back.
        expected_text = tokenizer.decode(generated, skip_special_tokens=True).rstrip("\ufffd")
        assert out.outputs[0].text == expected_text


def test_logprobs_match_transformers_log_softmax(smollm, hf_smollm):
    tokenizer, model = hf_smollm
    text = tokenizer.apply_chat_template(
        CONVERSATIONS[0], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=5, prompt_logprobs=3)
    out = smollm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0]
    generated = out.outputs[0].token_ids
    with torch.inference_mode():
        full = torch.tensor([ids + generated])
        reference = torch.log_softmax(model(full).logits[0].float(), dim=-1)
    # sampled positions: token t of the completion is scored at position len(ids) + t - 1
    total = 0.0
    for t, position in enumerate(out.outputs[0].logprobs):
        row = reference[len(ids) + t - 1]
        chosen = generated[t]
        assert position[chosen].logprob == pytest.approx(row[chosen].item(), abs=2e-3)
        assert position[chosen].rank == 1  # greedy
        top5 = row.topk(5).indices.tolist()
        assert [tid for tid, lp in position.items() if lp.rank is not None and lp.rank <= 5] == top5
        total += position[chosen].logprob
    assert out.outputs[0].cumulative_logprob == pytest.approx(total, abs=1e-4)
    # prompt positions: token j is scored at position j - 1; the first has no logprob
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for j in range(1, len(ids)):
        position, row = out.prompt_logprobs[j], reference[j - 1]
        assert position[ids[j]].logprob == pytest.approx(row[ids[j]].item(), abs=2e-3)
        expected_rank = int((row > row[ids[j]]).sum().item()) + 1
        assert abs(position[ids[j]].rank - expected_rank) <= 1  # ties at float precision
