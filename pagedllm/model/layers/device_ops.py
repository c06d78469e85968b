"""The device's implementation of each operation the layers run, chosen once when the
model is built (``device_ops``) and held by the layers: no forward pass asks which device
a tensor is on. The torch set runs anywhere (the CPU, and the reference); the CUDA set
(``cuda_ops.py``) swaps in the fused Triton kernels where they apply. Conditions on shape
(a kernel that takes only [tokens, n]) stay inside the implementations."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pagedllm.attention.metadata import KVWrite
from pagedllm.attention.torch_backend import write_kv_torch
from pagedllm.kernels import cpu_extension, cpu_norm
from pagedllm.model.layers.activation import silu_and_mul
from pagedllm.model.layers.fp8 import Quantizer
from pagedllm.model.layers.linear import cpu_linear
from pagedllm.model.layers.norm import add_rms_norm, rms_norm
from pagedllm.model.layers.rotary import RotaryEmbedding


@dataclass(frozen=True)
class Fp8Kernels:
    """The FP8 linear layers' CUDA kernels (``Fp8Linear.finish_loading`` picks among them)."""

    quantize_rows: Quantizer  # activations per token, for torch._scaled_mm
    small_batch_matmul: Callable[..., torch.Tensor]  # FP8 weights widened in registers
    # FP8 activations too (quantized inside), for schemes that quantize them; None without
    # FP8 tensor cores
    activation_small_batch_matmul: Callable[..., torch.Tensor] | None
    # ... taking [gate | up] rows, silu(gate) * up applied first (the MLP's down projection:
    # inside the kernel's loads for one row); None where activation_small_batch_matmul is
    activation_small_batch_gated_matmul: Callable[..., torch.Tensor] | None
    max_rows: int  # rows the small-batch kernel serves without FP8 tensor cores
    gemm_rows: int  # ... and with them (more rows go to torch._scaled_mm)
    tensor_cores: bool  # FP8 tensor cores: compute capability 8.9+ (Ada, Hopper, later)


@dataclass(frozen=True)
class DeviceOps:
    name: str
    # x [..., in] @ weight [out, in]^T + bias
    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    # (gate_up [..., 2 * in], weight, bias) -> linear(silu(gate) * up, weight, bias): the
    # MLP's down projection, which a kernel may fuse with the activation
    gated_linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    # (x, weight, eps) -> RMSNorm(x)
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    # (x, residual, weight, eps) -> (RMSNorm(x + residual), x + residual)
    add_rms_norm: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]
    ]
    # gate_up [..., 2 * d] (gate first) -> silu(gate) * up [..., d]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    # (rotary, positions [tokens]) -> this step's rotary rows, as ``rope_qk`` reads them
    # (gathered once per step, shared by the layers)
    rotary_rows: Callable[[RotaryEmbedding, torch.Tensor], Any]
    # (qkv [tokens, heads + 2 * kv_heads, head_dim], heads, kv_heads, rows, q/k RMSNorm
    # weights [2, head_dim] or None, eps, kv_write) -> q and k, normalized and rotated; with
    # a ``KVWrite``, the rotated k and the v heads also go into that paged cache, stored as
    # the attention backends store them (the CUDA set in the rotary kernel itself)
    rope_qk: Callable[
        [torch.Tensor, int, int, Any, torch.Tensor | None, float, KVWrite | None],
        tuple[torch.Tensor, torch.Tensor],
    ]
    fp8: Fp8Kernels | None = None  # None: FP8 weights are widened inside a torch product

    def __repr__(self) -> str:
        return f"DeviceOps({self.name})"


def device_ops(device: torch.device) -> DeviceOps:
    """The CUDA set on a CUDA device; on the CPU, the torch set with pagedllm's C++ norms
    where they are built; the torch set elsewhere."""
    if device.type == "cuda":
        from pagedllm.model.layers.cuda_ops import cuda_ops

        return cuda_ops(device)
    if device.type == "cpu" and cpu_extension.unavailable_reason() is None:
        return CPU_OPS
    return TORCH_OPS


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``cpu_linear``'s faster product order where it applies ([tokens, in] inputs)."""
    if x.dim() == 2:
        return cpu_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _gated_linear(
    gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _linear(silu_and_mul(gate_up), weight, bias)


def _rotary_rows(
    rotary: RotaryEmbedding, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rotary.cos_sin(positions)


def _rope_qk(
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    rows: tuple[torch.Tensor, torch.Tensor],
    qk_norm: torch.Tensor | None,
    eps: float,
    kv_write: KVWrite | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = rows
    rotate = RotaryEmbedding.rotate
    if qk_norm is not None:
        q = rotate(rms_norm(qkv[:, :heads], qk_norm[0], eps), cos, sin)
        k = rotate(rms_norm(qkv[:, heads : heads + kv_heads], qk_norm[1], eps), cos, sin)
    else:
        qk = rotate(qkv[:, : heads + kv_heads], cos, sin)
        q, k = qk[:, :heads], qk[:, heads:]
    if kv_write is not None:
        cache, slots, scale = kv_write
        write_kv_torch(cache, slots, k, qkv[:, heads + kv_heads :], scale)
    return q, k


def _cpu_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if cpu_norm.supports(x, weight):
        return cpu_norm.rms_norm(x, weight, eps)
    return rms_norm(x, weight, eps)


def _cpu_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if cpu_norm.supports(x, weight) and residual.dtype == x.dtype:
        return cpu_norm.add_rms_norm(x, residual, weight, eps)
    return add_rms_norm(x, residual, weight, eps)


TORCH_OPS = DeviceOps(
    name="torch",
    linear=_linear,
    gated_linear=_gated_linear,
    rms_norm=rms_norm,
    add_rms_norm=add_rms_norm,
    silu_and_mul=silu_and_mul,
    rotary_rows=_rotary_rows,
    rope_qk=_rope_qk,
)

# The CPU with pagedllm's C++ kernels (``pagedllm/csrc``): RMSNorm in one pass per row.
CPU_OPS = dataclasses.replace(
    TORCH_OPS, name="cpu", rms_norm=_cpu_rms_norm, add_rms_norm=_cpu_add_rms_norm
)
