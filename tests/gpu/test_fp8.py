"""FP8 on CUDA: the activation-quantization kernel against its torch definition, the KV
write and paged attention over an FP8 cache against torch references, FP8 tensor-core
linears against weight-only ones, and the engine with FP8 weights, cache, graphs."""

from __future__ import annotations

import pytest
import torch

from pagedllm import SamplingParams
from pagedllm.attention.torch_backend import write_kv_torch
from pagedllm.kernels.fp8_quant import quantize_rows
from pagedllm.kernels.fused_ops import write_kv
from pagedllm.model.layers.fp8 import quantize_rows_reference, quantize_weight
from pagedllm.model.layers.fp8_linear import Fp8Linear
from pagedllm.quantization import Fp8Scheme
from tests.gpu.test_gpu_engine import engine, greedy, prompts
from tests.gpu.test_paged_attention_kernel import reference
from tests.model.helpers import prefill_logits

FP8_CAPABLE = torch.cuda.get_device_capability() >= (8, 9)
needs_fp8 = pytest.mark.skipif(not FP8_CAPABLE, reason="FP8 needs compute capability 8.9+")


@pytest.mark.parametrize("n", [64, 576, 4096, 14336])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("static", [False, True])
def test_quantize_rows_kernel_is_its_definition(n, dtype, static):
    gen = torch.Generator(device="cuda").manual_seed(n)
    x = (torch.randn(37, n, generator=gen, device="cuda") * 3).to(dtype)
    x[5] = 0  # an all-zero row
    scale = torch.tensor([0.02], device="cuda") if static else None
    q, s = quantize_rows(x, scale)
    q_ref, s_ref = quantize_rows_reference(x, scale)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


@needs_fp8
@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_write_kv_quantizes_like_the_torch_backend(cache_dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(50, 8, 128, generator=gen, device="cuda").to(torch.bfloat16) * 20
    v = torch.randn(50, 8, 128, generator=gen, device="cuda").to(torch.bfloat16)
    slots = torch.randperm(64 * 16, device="cuda")[:50]
    scales = torch.tensor([0.03, 0.002], device="cuda")
    fused = torch.zeros(2, 64, 16, 8, 128, dtype=cache_dtype, device="cuda")
    plain = torch.zeros_like(fused)
    write_kv(k, v, fused, slots, scales)
    write_kv_torch(plain, slots, k, v, scales)
    assert torch.equal(fused.view(torch.uint8), plain.view(torch.uint8))


@needs_fp8
@pytest.mark.parametrize("segments", [1, 4])
@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_paged_attention_reads_an_fp8_cache(segments, cache_dtype):
    from pagedllm.kernels.paged_attention import paged_attention

    gen = torch.Generator(device="cuda").manual_seed(1)
    heads, kv_heads, dim, block_size = 16, 4, 128, 16
    query_lens = [1] * 4 if segments > 1 else [1, 33, 1, 140]
    prefixes = [300, 17, 999, 0] if segments == 1 else [300, 17, 999, 5]
    seq_lens = [q + p for q, p in zip(query_lens, prefixes)]
    need = [-(-s // block_size) for s in seq_lens]
    stored = torch.randn(2, sum(need), block_size, kv_heads, dim, generator=gen, device="cuda")
    cache = (stored * 50).clamp(-400, 400).to(cache_dtype)
    scales = torch.tensor([0.02, 0.05], device="cuda")
    table = torch.zeros(len(need), max(need), dtype=torch.int32, device="cuda")
    first = 0
    for i, n in enumerate(need):
        table[i, :n] = torch.arange(first, first + n, dtype=torch.int32)
        first += n
    tokens = sum(query_lens)
    q = torch.randn(tokens, heads, dim, generator=gen, device="cuda").to(torch.bfloat16)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    out = torch.full_like(q, float("nan"))
    partials = None
    if segments > 1:
        partials = (
            torch.empty(tokens, heads, segments, dim, device="cuda"),
            torch.empty(tokens, heads, segments, device="cuda"),
            torch.empty(tokens, heads, segments, device="cuda"),
        )
    paged_attention(
        q, cache, out, table, torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        torch.tensor(qsl, dtype=torch.int32, device="cuda"), len(seq_lens), max(query_lens),
        dim**-0.5, segments, partials, kv_scale=scales,
    )  # fmt: skip
    values = cache.float() * scales.view(2, 1, 1, 1, 1)
    expected = reference(q, values, table, seq_lens, qsl, dim**-0.5)
    assert ((out.double() - expected).norm() / expected.norm()).item() < 2e-2


@needs_fp8
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
def test_fp8_tensor_core_linear_stays_close_to_weight_only(rows):
    torch.manual_seed(rows)
    layer = Fp8Linear(256, 512, False, torch.bfloat16, [256, 256], Fp8Scheme(False, "dynamic"))
    layer = layer.cuda()
    for shard in (0, 1):
        layer.load("weight", torch.randn(256, 256) * 0.05, shard)
    layer.finish_loading()
    assert layer.use_fp8_gemm
    x = torch.randn(rows, 256, device="cuda", dtype=torch.bfloat16)
    fast = layer(x).float()
    layer.use_fp8_gemm = False
    exact = layer(x).float()
    assert (fast - exact).norm() / exact.norm() < 0.05


@needs_fp8
def test_engine_fp8_weights_and_cache_close_to_bfloat16(gpu_models):
    batch = prompts(5, 5)
    dense = prefill_logits(engine(gpu_models["llama"], dtype="bfloat16"), batch)
    for kwargs in ({"quantization": "fp8"}, {"kv_cache_dtype": "fp8"},
                   {"quantization": "fp8", "kv_cache_dtype": "fp8"}):  # fmt: skip
        llm = engine(gpu_models["llama"], dtype="bfloat16", **kwargs)
        layers = [m for m in llm.llm_engine.engine_core.runner.model.modules()
                  if isinstance(m, Fp8Linear)]  # fmt: skip
        assert all(layer.use_fp8_gemm for layer in layers)
        for got, want in zip(prefill_logits(llm, batch), dense):
            error = ((got.float() - want.float()).norm() / want.float().norm()).item()
            assert error < 0.1, (kwargs, error)


@needs_fp8
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fp8_cuda_graphs_match_eager(gpu_models, arch):
    batch = prompts(6)
    kwargs = dict(dtype="bfloat16", quantization="fp8", kv_cache_dtype="fp8",
                  calculate_kv_scales=True)  # fmt: skip
    eager = greedy(engine(gpu_models[arch], enforce_eager=True, **kwargs), batch, 32)
    graphs = greedy(engine(gpu_models[arch], **kwargs), batch, 32)
    assert graphs == eager


@needs_fp8
def test_fp8_checkpoint_on_the_gpu(gpu_models, tmp_path):
    from tests.model.fp8_checkpoints import save_dequantized_checkpoint, save_fp8_checkpoint

    dequantized = save_fp8_checkpoint(
        gpu_models["llama"], tmp_path / "fp8", "compressed-tensors", "tensor", "static"
    )
    save_dequantized_checkpoint(gpu_models["llama"], tmp_path / "dense", dequantized)
    batch = prompts(7, 4)
    quantized = prefill_logits(engine(tmp_path / "fp8", dtype="bfloat16"), batch)
    dense = prefill_logits(engine(tmp_path / "dense", dtype="bfloat16"), batch)
    for got, want in zip(quantized, dense):
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 0.1


def test_fp8_weights_quantize_on_the_device(gpu_models):
    llm = engine(gpu_models["qwen2"], dtype="bfloat16", quantization="fp8")
    params = SamplingParams(max_tokens=8, detokenize=False)
    out = llm.generate({"prompt_token_ids": [5, 6, 7]}, params, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 8
    q, scale = quantize_weight(torch.ones(4, 16, device="cuda"))
    assert q.is_cuda and torch.equal(scale, torch.full((4,), 1 / 448, device="cuda"))
