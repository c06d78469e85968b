"""Text-level behaviour with the bundled SmolLM2: stop strings, special tokens, streaming
of multi-byte text, chat, and the errors a user can run into."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from pagedllm import LLM, RequestOutputKind, SamplingParams

CHAT = [{"role": "user", "content": "List three fruits, one per line."}]


def greedy(**kwargs) -> SamplingParams:
    kwargs.setdefault("max_tokens", 40)
    return SamplingParams(temperature=0.0, **kwargs)


def test_stop_strings(smollm):
    free = smollm.chat(CHAT, greedy(), use_tqdm=False)[0].outputs[0]
    assert len(free.text) > 12
    stop = free.text[6:9]
    cut = smollm.chat(CHAT, greedy(stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert cut.text == free.text[: free.text.index(stop)]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)
    kept = smollm.chat(CHAT, greedy(stop=stop, include_stop_str_in_output=True), use_tqdm=False)
    assert kept[0].outputs[0].text == free.text[: free.text.index(stop) + len(stop)]


def test_eos_finishes_with_stop_reason_none(smollm):
    out = smollm.chat(CHAT, greedy(max_tokens=200), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason is None
    assert out.token_ids[-1] == smollm.get_tokenizer().eos_token_id
    assert "<|im_end|>" not in out.text
    # As vLLM: a stop token's text is left out unless asked for, special or not.
    raw = smollm.chat(CHAT, greedy(max_tokens=200, skip_special_tokens=False), use_tqdm=False)
    assert raw[0].outputs[0].text == out.text and raw[0].outputs[0].token_ids == out.token_ids
    kept = smollm.chat(CHAT, greedy(max_tokens=200, skip_special_tokens=False,
                                    include_stop_str_in_output=True), use_tqdm=False)  # fmt: skip
    assert kept[0].outputs[0].text == out.text + "<|im_end|>"


def test_a_stop_token_id_keeps_its_id_and_drops_its_text(smollm):
    free = smollm.generate("The capital of France is", greedy(max_tokens=6), use_tqdm=False)
    ids = free[0].outputs[0].token_ids
    tokenizer = smollm.get_tokenizer()
    for include in (False, True):
        params = greedy(stop_token_ids=[ids[2]], include_stop_str_in_output=include)
        out = smollm.generate("The capital of France is", params, use_tqdm=False)[0].outputs[0]
        assert out.token_ids == ids[:3] and (out.finish_reason, out.stop_reason) == ("stop", ids[2])
        shown = ids[:3] if include else ids[:2]
        assert out.text == tokenizer.decode(shown)


def test_detokenize_false_gives_ids_only(smollm):
    out = smollm.generate("Hello", greedy(max_tokens=5, detokenize=False), use_tqdm=False)[0]
    assert out.outputs[0].text == "" and len(out.outputs[0].token_ids) == 5


def test_streamed_chinese_never_breaks_a_character(smollm):
    engine = smollm.llm_engine
    tokenizer = smollm.get_tokenizer()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "请用中文写一段关于春天的短文。"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    params = greedy(max_tokens=60, output_kind=RequestOutputKind.DELTA)
    engine.add_request(
        "zh", {"prompt": prompt, "prompt_token_ids": tokenizer.encode(prompt)}, params
    )
    deltas, token_ids = [], []
    while engine.has_unfinished_requests():
        for output in engine.step():
            deltas.append(output.outputs[0].text)
            token_ids += output.outputs[0].token_ids
    assert all("\ufffd" not in d for d in deltas)
    text = "".join(deltas)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert text == tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")


def test_cumulative_and_final_only_kinds(smollm):
    engine = smollm.llm_engine
    seen = {}
    for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.FINAL_ONLY):
        engine.add_request(kind.name, "The sky is", greedy(max_tokens=8, output_kind=kind))
        outputs = []
        while engine.has_unfinished_requests():
            outputs += engine.step()
        seen[kind] = outputs
    cumulative = seen[RequestOutputKind.CUMULATIVE]
    assert len(cumulative) == 8
    assert all(
        b.outputs[0].text.startswith(a.outputs[0].text) for a, b in itertools.pairwise(cumulative)
    )
    final = seen[RequestOutputKind.FINAL_ONLY]
    assert len(final) == 1 and final[0].finished
    assert final[0].outputs[0].text == cumulative[-1].outputs[0].text


def test_chat_batch_and_template_kwargs(smollm):
    conversations = [CHAT, [{"role": "user", "content": "Say hi."}]]
    outputs = smollm.chat(conversations, greedy(max_tokens=8), use_tqdm=False)
    assert len(outputs) == 2
    assert outputs[0].prompt.startswith("<|im_start|>system")
    custom = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    out = smollm.chat(CHAT, greedy(max_tokens=4), chat_template=custom, use_tqdm=False)[0]
    assert out.prompt == CHAT[0]["content"] + "\n"


def test_truncate_prompt_tokens_minus_one_is_the_context_length(smollm):
    """-1, as vLLM: the last max_model_len tokens (2048 here), which leaves no room."""
    ids = list(range(100, 2200))
    params = greedy(max_tokens=2, truncate_prompt_tokens=-1)
    with pytest.raises(ValueError, match="no room"):
        smollm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)
    out = smollm.generate({"prompt_token_ids": ids[:50]}, params, use_tqdm=False)
    assert out[0].prompt_token_ids == ids[:50]


def test_truncate_prompt_tokens_past_the_context_is_refused(smollm):
    params = greedy(max_tokens=2, truncate_prompt_tokens=2049)
    with pytest.raises(ValueError, match="truncate_prompt_tokens must be at most"):
        smollm.generate({"prompt_token_ids": [100, 101]}, params, use_tqdm=False)


def test_truncate_prompt_tokens_keeps_the_tail(smollm):
    ids = smollm.get_tokenizer().encode("one two three four five six seven eight")
    out = smollm.generate(
        {"prompt_token_ids": ids}, greedy(max_tokens=2, truncate_prompt_tokens=3), use_tqdm=False
    )
    assert out[0].prompt_token_ids == ids[-3:]


def test_text_past_what_the_context_could_hold_is_refused_before_tokenizing(smollm):
    """2048 tokens of SmolLM2 cover at most 2048 x 81 (its longest entry) x 4 characters:
    longer text is refused, or with truncate_prompt_tokens cut to its tail, untokenized."""
    text = "hello " * 200_000  # 1.2 million characters
    start = time.monotonic()
    with pytest.raises(ValueError, match="more than the model's context could hold"):
        smollm.generate(text, greedy(max_tokens=1), use_tqdm=False)
    params = greedy(max_tokens=1, truncate_prompt_tokens=4)
    out = smollm.generate(text + "one two three", params, use_tqdm=False)
    assert out[0].prompt_token_ids == smollm.get_tokenizer().encode(" hello one two three")[-4:]
    assert time.monotonic() - start < 20


# -- errors: a clear sentence, nothing left behind ------------------------------------


def test_too_long_requests_are_rejected_with_numbers(tiny_smollm_dir):
    """SmolLM2's tokenizer on 2-layer random weights with a 256-token context: the checks
    are on lengths, and the bundled model's prefill of a 2048-token context took ~10 s."""
    llm = LLM(model=str(tiny_smollm_dir), kv_cache_memory_bytes="16M", max_model_len=256)
    tokenizer = llm.get_tokenizer()
    long_ids = list(range(100, 100 + 256))
    with pytest.raises(ValueError, match=r"length 256.*maximum model length of 256"):
        llm.generate({"prompt_token_ids": long_ids}, greedy(), use_tqdm=False)
    # As vLLM V1 offline, asking past the context is not an error: it runs until the
    # context is full and ends with "length".
    ids = tokenizer.encode("Hello there " * 150)[:248]
    assert len(ids) == 248
    out = llm.generate({"prompt_token_ids": ids}, greedy(max_tokens=50, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]  # fmt: skip
    assert (len(out.token_ids), out.finish_reason) == (8, "length")
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, greedy(), use_tqdm=False)
    with pytest.raises(ValueError, match="out of vocabulary"):
        llm.generate({"prompt_token_ids": [10**7]}, greedy(), use_tqdm=False)
    # A bad prompt in a batch adds nothing; the engine keeps serving.
    with pytest.raises(ValueError):
        llm.generate(["fine", {"prompt_token_ids": []}], greedy(), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    assert llm.generate("Still here?", greedy(max_tokens=3), use_tqdm=False)[0].finished


def test_bad_sampling_options_are_refused_by_name(smollm):
    for kwargs, pattern in (
        ({"logprobs": 50}, "max_logprobs"),
        ({"logit_bias": {10**7: 1.0}}, "logit_bias"),
        ({"logit_bias": {"9" * 5000: 1.0}}, "logit_bias keys must be token ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        # Sized by the vocabulary: each copy of the list, and each mask row, cost its length.
        ({"allowed_token_ids": [7] * 50_000}, "allowed_token_ids must have at most 49152 ids"),
        # Byte-by-byte text: 2 x ~6,000 tokens a word, compared with the output every step.
        ({"bad_words": ["\U0001f600" * 2048] * 2}, "bad_words tokenize to \\d+ tokens"),
        ({"best_of": 3, "output_kind": RequestOutputKind.DELTA}, "best_of"),
    ):
        with pytest.raises(ValueError, match=pattern):
            smollm.llm_engine.add_request("bad", "Hi", SamplingParams(**kwargs))
    assert not smollm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"quantization": "bitsandbytes"}, "supports fp8, compressed-tensors"),
        ({"kv_cache_dtype": "fp8_inc"}, "kv_cache_dtype"),
        ({"calculate_kv_scales": True}, "calculate_kv_scales"),
        ({"swap_space": -1}, "swap_space must be >= 0"),
        ({"preemption_mode": "swap"}, "needs swap_space > 0"),
        ({"tensor_parallel_size": 2}, "tensor_parallel_size"),
        ({"max_model_len": 100000}, r"100000.*8192"),
        ({"dtype": "float64"}, "dtype"),
        ({"scheduling_policy": "lifo"}, "scheduling_policy"),
    ],
)
def test_bad_engine_options_fail_at_start(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LLM(kv_cache_memory_bytes="16M", **kwargs)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="not_an_option"):
        LLM(not_an_option=1)


def test_kv_budget_too_small_names_the_numbers(capfd):
    """The engine process's refusal reaches the caller as its ValueError; the process logs
    no traceback of it (a configuration's refusal is not a fault)."""
    per_token = 2 * 30 * 3 * 64 * 4
    budget = 8 * 1024 * 1024
    fits = budget // (per_token * 16) * 16
    with pytest.raises(
        ValueError,
        match=rf"needs 0\.0879 GiB.*0\.00781 GiB.*largest max_model_len that fits is {fits}",
    ):
        LLM(kv_cache_memory_bytes=budget, max_model_len=2048)
    logged = "".join(capfd.readouterr())
    assert "Traceback" not in logged and "failed to start" not in logged


def test_unknown_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    with pytest.raises(
        ValueError, match=r"GPT2LMHeadModel not supported.*LlamaForCausalLM.*Qwen3ForCausalLM"
    ):
        LLM(model=str(tmp_path), load_format="dummy", skip_tokenizer_init=True)


def test_missing_model_offline_names_the_fix():
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        LLM(model="no-such-org/no-such-model")
