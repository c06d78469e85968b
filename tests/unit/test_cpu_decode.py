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


@pytest.mark.parametrize(
    ("arch", "v_type"),
    [("qwen2", 3), ("mistral", 3), ("llama", 8)],  # biases; a window; v in Q8_0 (two runs)
)
def test_a_decode_layer_matches_its_modules(arch, v_type):
    """Random Q4_1 weights in a tiny model, three sequences whose contexts end mid-block."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from pagedllm.attention.torch_backend import TorchAttentionBackend, TorchAttentionMetadata
    from pagedllm.model.decoder import ForwardContext
    from pagedllm.model.layers.gguf_blocks import GGUFLinear, StoredBlocks
    from pagedllm.model.registry import build_model
    from tests.conftest import tiny_config

    config = tiny_config(arch)
    if arch == "mistral":
        config.sliding_window = 8
    name = {"qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
            "llama": "LlamaForCausalLM"}[arch]  # fmt: skip
    model = build_model(name, config, torch.float32, torch.device("cpu"), gguf_blocks=True)
    rng = np.random.default_rng(0)
    for module in model.modules():
        if isinstance(module, GGUFLinear):
            for shard, rows in zip(module.shards(), module.output_sizes):
                values = rng.standard_normal((rows, module.in_features), dtype=np.float32) * 0.2
                qtype = v_type if shard == 2 else 3  # shard 2: v of q/k/v
                data = torch.from_numpy(quantize(values, GGMLQuantizationType(qtype)))
                module.load("weight", StoredBlocks(qtype, module.in_features, data), shard)
            if module.bias is not None:
                module.load("bias", torch.randn(module.out_features) * 0.1, None)
            module.finish_loading()
    for layer in model.model.stage_layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.data.uniform_(0.5, 1.5)
    linears = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    assert all(m.stored for m in linears)
    assert any(m.runs for m in linears) == (v_type != 3)
    stack = CpuDecodeStack(model.model.stage_layers)

    lens = torch.tensor([5, 20, 13])
    blocks, block_size = 16, 16
    table = torch.tensor([[3, 0], [7, 9], [12, 1]])
    slots = torch.stack([table[i, (n - 1) // block_size] * block_size + (n - 1) % block_size
                         for i, n in enumerate(lens.tolist())])  # fmt: skip
    valid = (torch.arange(2 * block_size)[None, :] < lens[:, None]).view(3, 1, 1, -1)
    metadata = TorchAttentionMetadata(slots, 3, table.reshape(-1), 2, valid, [], lens)
    kv_heads, head_dim = config.num_key_value_heads, config.hidden_size // 4
    caches = [torch.randn(2, blocks, block_size, kv_heads, head_dim) for _ in range(2)]
    rows = model.ops.rotary_rows(model.rotary, lens - 1)
    x = torch.randn(3, config.hidden_size)

    def context(kv_caches):
        return ForwardContext(TorchAttentionBackend(cpu_kernels=True), metadata, kv_caches, rows)

    modules_caches = [c.clone() for c in caches]
    hidden, residual = x, None
    for layer in model.model.stage_layers:
        hidden, residual = layer(hidden, residual, context(modules_caches))
    ctx = context([c.clone() for c in caches])
    assert stack.takes(3, ctx)
    got, got_residual = stack.run(x, ctx)
    torch.testing.assert_close(got, hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_residual, residual, rtol=1e-4, atol=1e-4)
    for fused, plain in zip(ctx.kv_caches, modules_caches):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
