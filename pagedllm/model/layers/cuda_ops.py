"""The CUDA set of ``DeviceOps``: the fused Triton kernels (``pagedllm.kernels``) where
the input has the [tokens, n] shape they take, torch otherwise. Imported only when a model
is built for a CUDA device (it imports triton)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.attention.metadata import KVWrite
from pagedllm.kernels import fp8_quant, fp8_w8a8_matmul, fp8_weight_matmul, fused_ops, gemv
from pagedllm.model.layers import activation, norm
from pagedllm.model.layers.device_ops import DeviceOps, Fp8Kernels
from pagedllm.model.layers.rotary import RotaryEmbedding


def cuda_ops(device: torch.device) -> DeviceOps:
    tensor_cores = torch.cuda.get_device_capability(device) >= (8, 9)
    fp8 = Fp8Kernels(
        quantize_rows=fp8_quant.quantize_rows,
        small_batch_matmul=fp8_weight_matmul.fp8_weight_matmul,
        activation_small_batch_matmul=(
            fp8_w8a8_matmul.small_batch_matmul if tensor_cores else None
        ),
        activation_small_batch_gated_matmul=(
            fp8_w8a8_matmul.small_batch_gated_matmul if tensor_cores else None
        ),
        max_rows=fp8_weight_matmul.MAX_ROWS,
        gemm_rows=fp8_weight_matmul.FP8_GEMM_ROWS,
        tensor_cores=tensor_cores,
    )
    return DeviceOps(
        name="cuda",
        linear=linear,
        gated_linear=gated_linear,
        rms_norm=rms_norm,
        add_rms_norm=add_rms_norm,
        silu_and_mul=silu_and_mul,
        rotary_rows=rotary_rows,
        rope_qk=rope_qk,
        fp8=fp8,
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """cuBLAS, but the GEMV kernel for one row (faster there, but for LM heads)."""
    if _one_row_gemv(x, weight, x.shape[-1], gated=False):
        return gemv.dense_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def gated_linear(
    gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """One kernel for one row where the GEMV kernel is preferred (it applies the
    activation as it loads), the activation kernel then ``linear`` otherwise."""
    if _one_row_gemv(gate_up, weight, gate_up.shape[-1] // 2, gated=True):
        return gemv.dense_linear(gate_up, weight, bias, gated=True)
    return linear(silu_and_mul(gate_up), weight, bias)


def _one_row_gemv(x: torch.Tensor, weight: torch.Tensor, k: int, gated: bool) -> bool:
    return (
        x.dim() == 2
        and x.shape[0] == 1
        and x.stride(1) == 1
        and x.dtype == weight.dtype
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.shape[1] == k
        and weight.is_contiguous()
        and gemv.dense_preferred(*weight.shape, gated=gated)
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dim() == 2:
        return fused_ops.rms_norm(x, weight, eps)[0]
    return norm.rms_norm(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One kernel: the residual add and the norm."""
    if x.dim() == 2:
        out, summed = fused_ops.rms_norm(x, weight, eps, residual)
        assert summed is not None
        return out, summed
    return norm.add_rms_norm(x, residual, weight, eps)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if gate_up.dim() == 2:
        return fused_ops.silu_and_mul(gate_up)
    return activation.silu_and_mul(gate_up)


def rotary_rows(
    rotary: RotaryEmbedding, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nothing gathered: the kernel reads the table by position itself."""
    return rotary.cos_sin_cache, positions


def rope_qk(
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    rows: tuple[torch.Tensor, torch.Tensor],
    qk_norm: torch.Tensor | None,
    eps: float,
    kv_write: KVWrite | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k norm and rotation in one kernel, in place in the projection output, which also
    writes the new K and V into the cache when given ``kv_write``."""
    cos_sin_cache, positions = rows
    fused_ops.rope_qk(qkv, heads, kv_heads, cos_sin_cache, positions, qk_norm, eps, kv_write)
    return qkv[:, :heads], qkv[:, heads : heads + kv_heads]
