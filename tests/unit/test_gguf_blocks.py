"""GGUF's Q4_0 / Q4_1 / Q8_0 / Q4_K / Q6_K blocks computed on as stored, on the CPU: the
kernels against the dequantized weights, the layers that hold blocks (merged shards, mixed
types), and the bundled model's weights in memory (the file's bytes, not float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from pagedllm.kernels import gguf_cpu
from pagedllm.model.layers.device_ops import device_ops
from pagedllm.model.layers.gguf_blocks import GGUFLinear, StoredBlocks, StoredLMHead, StoredTable
from pagedllm.model_files import bundled_gguf_path
from tests.conftest import engine_in_process

TYPES = [
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q6_K,
]
OPS = device_ops(torch.device("cpu"))


def blocks(rows: int, columns: int, qtype: GGMLQuantizationType, seed: int = 0) -> StoredBlocks:
    rng = np.random.default_rng(seed)
    if qtype == GGMLQuantizationType.Q4_K:  # gguf cannot quantize to these: random blocks
        return StoredBlocks(int(qtype), columns, q4_k_blocks(rows, columns // 256, rng))
    if qtype == GGMLQuantizationType.Q6_K:
        return StoredBlocks(int(qtype), columns, q6_k_blocks(rows, columns // 256, rng))
    values = rng.standard_normal((rows, columns), dtype=np.float32)
    data = torch.from_numpy(np.ascontiguousarray(quantize(values, qtype)))
    return StoredBlocks(int(qtype), columns, data)


def q4_k_blocks(rows: int, per_row: int, rng: np.random.Generator) -> torch.Tensor:
    """Q4_K super-blocks (144 bytes): d and dmin as small float16s, then random scale,
    minimum and code bytes (every byte pattern is a valid block)."""
    count = rows * per_row
    scales = rng.uniform(1e-3, 2e-2, (count, 2)).astype(np.float16).view(np.uint8)
    rest = rng.integers(0, 256, (count, 140), dtype=np.uint8)
    return torch.from_numpy(np.concatenate([scales, rest], axis=1).reshape(rows, -1))


def q6_k_blocks(rows: int, per_row: int, rng: np.random.Generator) -> torch.Tensor:
    """Q6_K super-blocks (210 bytes): random code and scale bytes, then d a small float16."""
    count = rows * per_row
    rest = rng.integers(0, 256, (count, 208), dtype=np.uint8)
    scale = rng.uniform(1e-4, 1e-3, (count, 1)).astype(np.float16).view(np.uint8)
    return torch.from_numpy(np.concatenate([rest, scale], axis=1).reshape(rows, -1))


def dense(stored: StoredBlocks) -> torch.Tensor:
    qtype = GGMLQuantizationType(stored.qtype)
    return torch.from_numpy(dequantize(stored.data.numpy(), qtype).astype(np.float32))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(40, 256), (98, 512)])  # partial tiles of 16 and of 4 rows
# 1-2: gemv per row; 7-13: gemm_few (16-row passes, an 8-row tail); 70: the panels
@pytest.mark.parametrize("rows", [1, 2, 7, 13, 70])
def test_products_and_lookups_match_the_dequantized_weights(qtype, shape, rows):
    stored = blocks(*shape, qtype)
    weight = dense(stored)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    got, want = gguf_cpu.linear(stored.data, stored.qtype, x), x @ weight.T
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
    ids = torch.tensor([shape[0] - 1, 0, 5, 5])
    assert torch.equal(gguf_cpu.rows(stored.data, stored.qtype, shape[1], ids), weight[ids])
    assert torch.equal(stored.dequantize(), weight)


def test_a_row_outside_the_table_or_a_wrong_width_is_refused():
    stored = blocks(8, 64, GGMLQuantizationType.Q8_0)
    with pytest.raises(RuntimeError, match="outside"):
        gguf_cpu.rows(stored.data, stored.qtype, 64, torch.tensor([8]))
    with pytest.raises(RuntimeError, match="do not match"):
        gguf_cpu.linear(stored.data, stored.qtype, torch.randn(1, 96))
    q4_k = blocks(2, 256, GGMLQuantizationType.Q4_K)  # 144 bytes a row: 256 values, 8 x 32
    with pytest.raises(RuntimeError, match="do not match"):
        gguf_cpu.linear(q4_k.data.view(4, 72), q4_k.qtype, torch.randn(1, 128))  # half blocks
    with pytest.raises(RuntimeError, match="not Q4_0, Q4_1, Q8_0, Q4_K or Q6_K"):
        gguf_cpu.linear(stored.data, 13, torch.randn(1, 64))  # Q5_K


def merged(*parts: StoredBlocks | torch.Tensor, bias: bool = False) -> GGUFLinear:
    sizes = [p.shape[0] for p in parts]
    layer = GGUFLinear(64, sum(sizes), bias, torch.float32, sizes, ops=OPS)
    for shard, part in enumerate(parts):
        layer.load("weight", part, shard)
    if bias:
        layer.load("bias", torch.arange(sum(sizes), dtype=torch.float32), None)
    layer.finish_loading()
    return layer


def test_a_merged_layer_keeps_blocks_of_one_type_and_dequantizes_a_mix():
    q4 = GGMLQuantizationType.Q4_1
    q, k, v = blocks(32, 64, q4, 1), blocks(16, 64, q4, 2), blocks(16, 64, q4, 3)
    x = torch.randn(3, 64)
    kept = merged(q, k, v, bias=True)
    assert kept.qtype == int(q4) and kept.weight.dtype == torch.uint8
    assert kept.weight.shape == (64, 40)  # 64 rows of two 20-byte blocks: the file's bytes
    want = x @ torch.cat([dense(q), dense(k), dense(v)]).T + torch.arange(64.0)
    torch.testing.assert_close(kept(x), want, rtol=1e-5, atol=1e-4)
    # One shard of another type (Q8_0): runs of rows, each on its own blocks.
    odd = blocks(16, 64, GGMLQuantizationType.Q8_0, 4)
    runs = merged(q, k, odd, bias=True)
    assert runs.qtype is None and runs.runs == [(int(q4), 48), (int(odd.qtype), 16)]
    assert [tuple(w.shape) for w in runs.run_weights] == [(48, 40), (16, 68)]
    want = x @ torch.cat([dense(q), dense(k), dense(odd)]).T + torch.arange(64.0)
    torch.testing.assert_close(runs(x), want, rtol=1e-5, atol=1e-4)
    # One shard dense (F16 in the file, or a type the kernels lack): the layer dequantizes.
    mixed = merged(q, k, dense(v))
    assert mixed.qtype is None and not mixed.runs and mixed.weight.dtype == torch.float32
    assert torch.equal(mixed.weight, torch.cat([dense(q), dense(k), dense(v)]))
    torch.testing.assert_close(mixed(x), x @ mixed.weight.T)


def test_a_shard_of_the_wrong_shape_is_refused():
    layer = GGUFLinear(64, 48, False, torch.float32, [32, 16], ops=OPS)
    with pytest.raises(ValueError, match="does not fit"):
        layer.load("weight", blocks(32, 96, GGMLQuantizationType.Q8_0), 0)
    with pytest.raises(ValueError, match="does not fit"):
        layer.load("weight", blocks(24, 64, GGMLQuantizationType.Q8_0), 1)


def test_a_tied_lm_head_computes_on_the_embeddings_blocks():
    table = blocks(100, 64, GGMLQuantizationType.Q8_0)
    embedding = StoredTable(100, 64, torch.float32)
    embedding.load_table(table, "model.embed_tokens.weight")
    head = StoredLMHead(100, 64, torch.float32, OPS)
    head.tie(embedding)
    ids = torch.tensor([[3, 99], [0, 3]])
    assert torch.equal(embedding(ids), dense(table)[ids])
    hidden = torch.randn(2, 64)
    torch.testing.assert_close(head(hidden), hidden @ dense(table).T, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        embedding.load_table(blocks(100, 32, GGMLQuantizationType.Q8_0), "embed")


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_the_bundled_models_weights_are_the_files_bytes(kernels, monkeypatch):
    """Issue 21's bound: the weights in memory at most 1.2x the file (Q4_1 and Q8_0 as
    stored); PAGEDLLM_CPU_GGUF_KERNELS=0 dequantizes them (float32 here, ~5x the file)."""
    from pagedllm import LLM

    monkeypatch.setenv("PAGEDLLM_CPU_GGUF_KERNELS", kernels)
    with engine_in_process():
        llm = LLM(dtype="float32", kv_cache_memory_bytes="16M", max_model_len=256)
    model = llm.llm_engine.engine_core.runner.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    file_bytes = bundled_gguf_path().stat().st_size
    if kernels == "1":
        assert weight_bytes <= 1.2 * file_bytes
        assert isinstance(model.model.layers[0].mlp.gate_up_proj, GGUFLinear)
        assert model.model.layers[0].mlp.gate_up_proj.qtype == int(GGMLQuantizationType.Q4_1)
    else:
        assert weight_bytes > 4 * file_bytes


def test_dtype_auto_is_float32_where_the_blocks_are_kept(monkeypatch):
    """Even on a CPU whose table says float16: the blocks' products are float32."""
    from pagedllm import config as config_module
    from pagedllm.config import EngineArgs

    monkeypatch.delenv("PAGEDLLM_CPU_DTYPE", raising=False)  # the suite pins float32
    monkeypatch.setattr(config_module, "_auto_cpu_dtype", lambda: "float16")

    def dtype(**kwargs) -> str:
        args = EngineArgs(model=str(bundled_gguf_path()), device="cpu", **kwargs)
        return args.create_engine_config().model_config.dtype

    assert dtype() == "float32"
    assert dtype(dtype="bfloat16") == "bfloat16"
    monkeypatch.setenv("PAGEDLLM_CPU_GGUF_KERNELS", "0")
    assert dtype() == "float16"
