"""FP8 weights and KV cache on the CPU: the arithmetic, every checkpoint form against
quantizing online, the errors a bad checkpoint gets, and the FP8 cache."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.attention.torch_backend import _Reader, write_kv_torch
from pagedllm.model.decoder import Attention
from pagedllm.model.layers.fp8 import (
    FP8_MAX,
    quantize_rows_reference,
    quantize_weight,
    scaled_mm_linear,
    weight_only_linear,
)
from pagedllm.model.layers.fp8_linear import Fp8Linear
from tests.conftest import engine_in_process
from tests.model.fp8_checkpoints import (
    INPUT_SCALES,
    save_dequantized_checkpoint,
    save_fp8_checkpoint,
)
from tests.model.helpers import prefill_logits

PROMPTS = [[5, 17, 99, 3, 250, 7, 8, 91, 23], list(range(40, 77)), [300, 12, 4]]


def build(model: str, **kwargs) -> LLM:
    with engine_in_process():  # prefill_logits and the checks below read the runner
        return LLM(
            model=model, skip_tokenizer_init=True, kv_cache_memory_bytes="16M",
            max_model_len=256, **kwargs,
        )  # fmt: skip


def runner(llm: LLM):
    return llm.llm_engine.engine_core.runner


def fp8_layers(llm: LLM) -> list[Fp8Linear]:
    return [m for m in runner(llm).model.modules() if isinstance(m, Fp8Linear)]


# -- the arithmetic ------------------------------------------------------------------------


def test_weight_rows_quantize_to_their_own_scale():
    torch.manual_seed(0)
    w = torch.randn(48, 64) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different size
    q, scale = quantize_weight(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (48,)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((48,), FP8_MAX))
    error = (q.float() * scale[:, None] - w).norm(dim=1) / w.norm(dim=1)
    assert error.max() < 0.04  # e4m3 keeps 3 mantissa bits: ~2.5% relative per row


def test_weight_only_product_is_the_dequantized_product():
    torch.manual_seed(0)
    x, w, bias = torch.randn(7, 64), torch.randn(32, 64), torch.randn(32)
    q, scale = quantize_weight(w)
    expected = x @ (q.float() * scale[:, None]).t() + bias
    torch.testing.assert_close(weight_only_linear(x, q, scale, bias), expected)


def test_fp8_gemm_quantizes_activations_per_token_or_statically():
    torch.manual_seed(0)
    x = torch.randn(6, 64) * torch.tensor([1e-3, 1.0, 30.0, 0.0, 5.0, 1.0])[:, None]
    q, scale = quantize_rows_reference(x)
    assert torch.equal(scale[3], torch.tensor([1 / (FP8_MAX * 512)]))  # all-zero row
    torch.testing.assert_close(q.float() * scale, x, rtol=0.07, atol=1e-6)
    static = torch.tensor([0.05])
    q, scale = quantize_rows_reference(x, static)
    assert torch.equal(scale, torch.full((6, 1), 0.05))
    assert q[2].float().abs().max() == FP8_MAX  # the 30x row saturates at 448 * 0.05
    assert q[1].float().abs().max() < FP8_MAX
    w = torch.randn(32, 64)
    wq, wscale = quantize_weight(w)
    exact = x @ (wq.float() * wscale[:, None]).t()
    got = scaled_mm_linear(x, wq, wscale.view(1, -1), None, None)
    error = (got - exact).norm(dim=1) / exact.norm(dim=1).clamp(min=1e-9)
    assert error[[0, 1, 2, 4]].max() < 0.05  # row 3 is all zeros: no relative error


# -- checkpoints ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def online(tiny_models):
    return build(str(tiny_models["llama"]), quantization="fp8")


@pytest.fixture(scope="module")
def online_logits(online):
    return prefill_logits(online, PROMPTS)


def test_online_quantization_keeps_embeddings_and_head_in_the_model_dtype(online):
    model = runner(online).model
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.float32
    layers = fp8_layers(online)
    assert len(layers) == 2 * 4  # qkv, o, gate_up, down per layer
    assert all(layer.weight.dtype == torch.float8_e4m3fn for layer in layers)
    assert not any(layer.use_fp8_gemm for layer in layers)  # CPU: weight-only


@pytest.mark.parametrize(
    "method, activations",
    [("fp8", "dynamic"), ("compressed-tensors", "dynamic"), ("compressed-tensors", "none")],
)
def test_per_channel_checkpoints_load_to_the_online_logits(
    tiny_models, tmp_path, online_logits, method, activations
):
    path = tmp_path / "ckpt"
    save_fp8_checkpoint(tiny_models["llama"], path, method, "channel", activations)
    llm = build(str(path))  # read from its quantization_config, no flag
    for got, want in zip(prefill_logits(llm, PROMPTS), online_logits):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "method, activations",
    [("fp8", "dynamic"), ("fp8", "static"), ("compressed-tensors", "static")],
)
def test_per_tensor_checkpoints_compute_with_the_weights_they_stand_for(
    tiny_models, tmp_path, method, activations
):
    dequantized = save_fp8_checkpoint(
        tiny_models["llama"], tmp_path / "fp8", method, "tensor", activations
    )
    save_dequantized_checkpoint(tiny_models["llama"], tmp_path / "dense", dequantized)
    quantized, dense = build(str(tmp_path / "fp8")), build(str(tmp_path / "dense"))
    for got, want in zip(prefill_logits(quantized, PROMPTS), prefill_logits(dense, PROMPTS)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if activations == "static":
        qkv = runner(quantized).model.model.layers[0].self_attn.qkv_proj
        assert qkv.act_scale.item() == pytest.approx(max(INPUT_SCALES.values()))


def test_fp8_gemm_path_stays_close_to_weight_only(tiny_models, tmp_path):
    """The tensor-core path's arithmetic (activations quantized per token, row-wise scaled
    product), run through torch._scaled_mm on the CPU."""
    llm = build(str(tiny_models["llama"]), quantization="fp8")
    weight_only = prefill_logits(llm, PROMPTS)
    exact = prefill_logits(build(str(tiny_models["llama"])), PROMPTS)
    for layer in fp8_layers(llm):
        layer.use_fp8_gemm = True
    for got, want, dense in zip(prefill_logits(llm, PROMPTS), weight_only, exact):
        assert not torch.equal(got, want)
        # Quantizing the activations moves the logits about as far as quantizing the
        # weights did (9-15% on this tiny random model); a wrong scale would move them 100%.
        weights_error = (want - dense).norm()
        assert (got - want).norm() < 1.5 * weights_error


def test_a_full_precision_weight_in_an_fp8_checkpoint_is_an_error(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "ckpt"
    save_fp8_checkpoint(tiny_models["llama"], path, "fp8", "channel", "dynamic")
    tensors = load_file(str(path / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name] = tensors[name].float()
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="quantization_config says its weights are FP8"):
        build(str(path))


@pytest.mark.parametrize(
    "edit, pattern",
    [
        ("drop_scale", r"missing 1 tensors: model.layers.1.self_attn.qkv_proj.weight_scale#1"),
        ("block_scale", "block-wise scales are not supported"),
        ("zero_point", "asymmetric"),
    ],
)
def test_broken_fp8_checkpoints_are_refused(tiny_models, tmp_path, edit, pattern):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "ckpt"
    save_fp8_checkpoint(tiny_models["llama"], path, "compressed-tensors", "channel", "dynamic")
    tensors = load_file(str(path / "model.safetensors"))
    if edit == "drop_scale":
        del tensors["model.layers.1.self_attn.k_proj.weight_scale"]
    elif edit == "block_scale":
        tensors["model.layers.0.mlp.up_proj.weight_scale"] = torch.ones(8, 4)
    else:
        tensors["model.layers.0.self_attn.k_zero_point"] = torch.zeros(())
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=pattern):
        build(str(path))


@pytest.mark.parametrize(
    "kv_scales, expected",
    [
        ({"k_scale": 0.25, "v_scale": 0.5}, (0.25, 0.5)),
        ({"k_proj.output_scale": 0.125, "v_proj.output_scale": 2.0}, (0.125, 2.0)),
        ({"kv_scale": 0.75}, (0.75, 0.75)),
        ({"k_scale": 0.25, "v_scale": 0.5, "q_scale": 9.0, "prob_scale": 9.0}, (0.25, 0.5)),
    ],
)
def test_kv_cache_scales_load_under_each_spelling(tiny_models, tmp_path, kv_scales, expected):
    path = tmp_path / "ckpt"
    save_fp8_checkpoint(tiny_models["llama"], path, "fp8", "channel", "dynamic", kv_scales)
    llm = build(str(path), kv_cache_dtype="fp8")
    for layer in runner(llm).model.model.layers:
        assert layer.self_attn.kv_scale.tolist() == list(expected)


def test_dummy_weights_quantize_too(tmp_path):
    from tests.conftest import tiny_config

    (tmp_path / "config.json").write_text(tiny_config("qwen2").to_json_string())
    llm = build(str(tmp_path), load_format="dummy", quantization="fp8")
    assert fp8_layers(llm) and all(layer.weight_scale.min() > 0 for layer in fp8_layers(llm))
    params = SamplingParams(max_tokens=4, detokenize=False)
    out = llm.generate({"prompt_token_ids": [4, 5, 6]}, params, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


# -- the FP8 KV cache ----------------------------------------------------------------------


def test_fp8_cache_round_trip_saturates_instead_of_overflowing():
    torch.manual_seed(0)
    cache = torch.zeros(2, 4, 4, 2, 16, dtype=torch.float8_e4m3fn)
    k, v = torch.randn(5, 2, 16), torch.randn(5, 2, 16) * 100
    k[0, 0, 0] = 1e6  # far beyond 448 * scale
    scales = torch.tensor([0.01, 0.5])
    slots = torch.tensor([0, 3, 5, 6, 15])
    write_kv_torch(cache, slots, k, v, scales)
    read = _Reader(cache, scales, torch.float32)
    back = read(torch.arange(4)).view(2, 16, 2, 16)[:, slots]
    assert torch.isfinite(back).all()
    assert back[0, 0, 0, 0] == FP8_MAX * 0.01
    k[0, 0, 0] = FP8_MAX * 0.01
    torch.testing.assert_close(back[0], k, rtol=0.07, atol=1e-6)
    torch.testing.assert_close(back[1], v, rtol=0.07, atol=1e-6)


def test_fp8_cache_holds_four_times_the_tokens_of_a_float32_one(tiny_models):
    def blocks(**kwargs) -> int:
        llm = build(str(tiny_models["llama"]), **kwargs)
        return llm.llm_engine.engine_core.kv_cache_plan.num_blocks

    assert blocks(kv_cache_dtype="fp8") == 4 * blocks()  # CPU models compute in float32
    assert blocks(kv_cache_dtype="fp8_e5m2") == 4 * blocks()


def test_fp8_cache_is_read_the_same_whatever_the_chunking(tiny_models):
    """Every query reads K/V back from the FP8 cache: a prompt computed in one chunk and in
    eight gives the same prompt logprobs."""
    prompt = {"prompt_token_ids": [(i * 37) % 380 + 3 for i in range(120)]}
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def logprobs(**kwargs) -> list[float]:
        llm = build(str(tiny_models["llama"]), kv_cache_dtype="fp8", **kwargs)
        out = llm.generate(prompt, params, use_tqdm=False)[0]
        return [next(iter(d.values())).logprob for d in out.prompt_logprobs[1:]]

    whole, chunked = logprobs(), logprobs(max_num_batched_tokens=16, max_num_seqs=4)
    assert whole == pytest.approx(chunked, abs=1e-4)
    plain = build(str(tiny_models["llama"])).generate(prompt, params, use_tqdm=False)[0]
    reference = [next(iter(d.values())).logprob for d in plain.prompt_logprobs[1:]]
    assert whole != pytest.approx(reference, abs=1e-4)  # the cache really is FP8
    drift = sum(abs(a - b) for a, b in zip(whole, reference))
    assert drift < 0.03 * sum(abs(b) for b in reference)  # measured: 1.6%


def test_calculated_kv_scales_follow_vllms_definition():
    from pagedllm.model.decoder import DecoderSpec
    from pagedllm.model.layers.device_ops import TORCH_OPS
    from pagedllm.model.layers.linear import plain_linears
    from tests.conftest import tiny_config

    spec = DecoderSpec.from_config(tiny_config("llama"), "llama")
    linears = plain_linears(torch.float32, TORCH_OPS)
    attention = Attention(spec, 0, torch.float32, linears, TORCH_OPS)
    k, v = torch.randn(9, 2, 16), torch.randn(9, 2, 16)
    attention._calculate_kv_scales(k, v)
    assert attention.kv_scale.tolist() == pytest.approx(
        [k.abs().max().item() / 200, v.abs().max().item() / 100]
    )
    attention._calculate_kv_scales(torch.zeros(9, 2, 16), v)
    assert attention.kv_scale[0] == 1.0  # nothing to scale: kept usable


def test_calculate_kv_scales_sets_them_once_from_the_first_step(tiny_models):
    llm = build(str(tiny_models["llama"]), kv_cache_dtype="fp8", calculate_kv_scales=True)
    layers = runner(llm).model.model.layers
    assert all(layer.self_attn.kv_scale.tolist() == [1.0, 1.0] for layer in layers)
    params = SamplingParams(max_tokens=3, detokenize=False)
    llm.generate({"prompt_token_ids": list(range(3, 60))}, params, use_tqdm=False)
    first = [layer.self_attn.kv_scale.clone() for layer in layers]
    assert all((s != 1.0).all() and (s > 0).all() for s in first)
    llm.generate({"prompt_token_ids": [9] * 40}, params, use_tqdm=False)
    assert all(torch.equal(s, layer.self_attn.kv_scale) for s, layer in zip(first, layers))
