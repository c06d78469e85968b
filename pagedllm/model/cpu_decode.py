"""Decode steps on the CPU with every layer in C++ (``pagedllm/csrc/decode_layer_cpu.cpp``):
once the products read 4-bit weights, a single stream spends as long in the layers' Python
code (modules, views, small ops; ~0.15 ms a layer) as in the products themselves.

``CpuDecodeStack.build`` makes one C++ ``DecodeLayer`` per layer where the whole model
qualifies: one rank, float32, every linear layer on GGUF blocks as stored, no q/k norms.
A step takes it when every query is a single token attended by the CPU kernel (no prefill
chunk, no FP8 cache, no KV scales to compute, no host-tier loads in flight); other steps run
the modules. Both compute the same arithmetic (tests/unit/test_cpu_decode.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pagedllm.attention.torch_backend import TorchAttentionMetadata
from pagedllm.kernels import cpu_extension
from pagedllm.kernels.cpu_attention import MAX_GROUP
from pagedllm.model.layers.gguf_blocks import GGUFLinear

if TYPE_CHECKING:
    from pagedllm.model.decoder import CausalLM, DecoderLayer, ForwardContext


class CpuDecodeStack:
    def __init__(self, layers: list[DecoderLayer]) -> None:
        self.layers = [_decode_layer(layer) for layer in layers]

    @classmethod
    def build(cls, model: CausalLM) -> CpuDecodeStack | None:
        """The stack for ``model``, or None where some layer does not qualify."""
        if model.plan is not None or cpu_extension.unavailable_reason() is not None:
            return None
        layers = model.model.stage_layers
        return cls(layers) if all(_qualifies(layer) for layer in layers) else None

    def takes(self, num_tokens: int, ctx: ForwardContext) -> bool:
        metadata = ctx.attn_metadata
        return (
            isinstance(metadata, TorchAttentionMetadata)
            and not metadata.prefills
            and metadata.num_decodes == num_tokens
            and getattr(ctx.backend, "cpu_kernels", False)
            and ctx.kv_caches[0].dtype == torch.float32
            and not ctx.calculate_kv_scales
            and ctx.kv_loads is None
            and ctx.intermediate is None
        )

    def run(self, x: torch.Tensor, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer on the embedded tokens ``x``: (hidden states, residual)."""
        metadata = ctx.attn_metadata
        tokens = x.shape[0]
        cos, sin = (rows.reshape(tokens, -1).contiguous() for rows in ctx.rotary_rows)
        table = metadata.decode_block_ids.view(tokens, metadata.decode_max_blocks)
        residual = None
        for layer, cache in zip(self.layers, ctx.kv_caches):
            x, residual = layer.forward(
                x, residual, cache, metadata.slot_mapping, table, metadata.decode_seq_lens,
                cos, sin,
            )  # fmt: skip
        assert residual is not None
        return x, residual


def _linears(layer: DecoderLayer) -> list[torch.nn.Module]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj]


def _qualifies(layer: DecoderLayer) -> bool:
    attn = layer.self_attn
    return (
        all(isinstance(m, GGUFLinear) and m.stored for m in _linears(layer))
        and attn.q_norm is None
        and attn.tp_group is None
        and layer.mlp.tp_group is None
        and layer.input_layernorm.weight.dtype == torch.float32
        and attn.head_dim % 8 == 0
        and attn.num_heads // attn.num_kv_heads <= MAX_GROUP
    )


def _decode_layer(layer: DecoderLayer) -> object:
    attn, linears = layer.self_attn, _linears(layer)
    runs = [_runs(m) for m in linears]
    return cpu_extension.module().DecodeLayer(
        layer.input_layernorm.weight.data, layer.post_attention_layernorm.weight.data,
        layer.input_layernorm.eps, [w for w, _ in runs], [q for _, q in runs],
        [None if m.bias is None else m.bias.data for m in linears],
        attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.scale, attn.window or 0,
    )  # fmt: skip


def _runs(linear: GGUFLinear) -> tuple[list[torch.Tensor], list[int]]:
    """The layer's blocks as runs of rows of one type each (one run for most layers)."""
    if linear.qtype is not None:
        return [linear.weight.data], [linear.qtype]
    return [w.data for w in linear.run_weights], [q for q, _ in linear.runs]
