"""Small fused kernels for the CUDA decoder layer. A decode step of a large model is bound
by reading weights, but each unfused elementwise op is one more kernel in a chain of
hundreds; these fuse them:

- ``rms_norm``: optional residual add + RMSNorm (two kernels -> one);
- ``silu_and_mul``: act(gate) * up (two -> one);
- ``rope_qk``: rotary embedding of q and k in place in the q/k/v projection output, with
  Qwen3's per-head q/k RMSNorm first when given, and the new K and V written into the
  paged cache when asked (up to ten -> one);
- ``write_kv``: new K and V into the paged cache by slot, quantized for an FP8 cache
  (two or more -> one).

Arithmetic is in float32, rounded once to the tensor dtype. Each is launched with
programmatic dependent launch where the device has it (``dependent_launch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from pagedllm.kernels import dependent_launch
from pagedllm.kernels.dependent_launch import await_inputs

if TYPE_CHECKING:
    from pagedllm.attention.metadata import KVWrite


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, out_ptr, res_out_ptr, w_ptr, eps, n,
    stride_x, stride_res, stride_out, stride_res_out,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    await_inputs(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + row * stride_res + cols, mask=ok, other=0.0).to(tl.float32)
        x = x.to(res_out_ptr.dtype.element_ty)  # the residual stream keeps the model dtype
        tl.store(res_out_ptr + row * stride_res_out + cols, x, mask=ok)
        x = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / n + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (x * inv * w).to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x: [tokens, hidden] (last dim contiguous). Returns (norm(x + residual), x + residual)
    or (norm(x), None)."""
    tokens, n = x.shape
    assert x.stride(1) == 1 and weight.shape == (n,), "rms_norm: bad shapes or strides"
    out = torch.empty((tokens, n), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    res = residual if residual is not None else x
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(tokens,)](
        x, res, out, res_out, weight, eps, n,
        x.stride(0), res.stride(0), out.stride(0), res_out.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=norm_warps(block),
        **dependent_launch.launch_args(x.device),
    )  # fmt: skip
    return out, (res_out if residual is not None else None)


def norm_warps(block: int) -> int:
    """One program holds a whole row: 8 values a thread, up to 16 warps. With the default 4
    warps a 4,096-wide row is 32 values a thread in sequence, and a single stream's decode
    (one row, one program) waits on that chain 65 times a token."""
    return max(4, min(16, block // 256))


@triton.jit
def load_gated(gate_ptrs, mask, up_offset):
    """silu(gate) * up for the gate values at ``gate_ptrs`` and the up values
    ``up_offset`` elements on, computed in float32 and rounded to their dtype. The one
    definition of the MLP's activation on CUDA: the activation kernel stores it, and the
    products that fuse the activation (``kernels/gemv``, ``kernels/fp8_w8a8_matmul``) load
    their input through it, so fusing changes no value."""
    gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptrs + up_offset, mask=mask, other=0.0).to(tl.float32)
    return (gate / (1.0 + tl.exp(-gate)) * up).to(gate_ptrs.dtype.element_ty)


@triton.jit
def _silu_mul_kernel(
    gu_ptr, out_ptr, n, stride_gu, stride_out, BLOCK: tl.constexpr, PDL: tl.constexpr
):
    await_inputs(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n
    value = load_gated(gu_ptr + row * stride_gu + cols, ok, n)  # out has gate_up's dtype
    tl.store(out_ptr + row * stride_out + cols, value, mask=ok)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[tokens, 2 * d] (gate first) -> [tokens, d]."""
    tokens, two_d = gate_up.shape
    assert gate_up.stride(1) == 1 and two_d % 2 == 0, "silu_and_mul: bad shape or strides"
    n = two_d // 2
    out = torch.empty((tokens, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(tokens, triton.cdiv(n, block))](
        gate_up, out, n, gate_up.stride(0), out.stride(0), BLOCK=block,
        **dependent_launch.launch_args(gate_up.device),
    )  # fmt: skip
    return out


@triton.jit
def _rope_qk_kernel(
    qkv_ptr, cos_sin_ptr, pos_ptr, norm_ptr, eps,
    stride_t, stride_h, num_q_heads, num_heads,
    cache_ptr, slot_ptr, scale_ptr, v_offset,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, HAS_NORM: tl.constexpr,
    HEADS: tl.constexpr, WRITE_KV: tl.constexpr, QUANT: tl.constexpr,
    QUANT_MAX: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """One program per (token, group of HEADS heads) among the q heads then the k heads:
    optional per-head RMSNorm, then x * cos + rotate_half(x) * sin, written back in place.
    A program per single head moved 256 bytes and left most of its threads idle (an
    8,192-token step of llama-8b launched 328k of them, at a fifth of the bandwidth).
    WRITE_KV: each k head of the group also goes to the paged cache at the token's slot,
    with its v head, as ``write_kv`` stores them (one kernel a layer fewer)."""
    await_inputs(PDL)
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    head_ok = heads < num_heads
    dims = tl.arange(0, HALF)
    base = qkv_ptr + token * stride_t + heads[:, None] * stride_h + dims[None, :]
    x1 = tl.load(base, mask=head_ok[:, None], other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=head_ok[:, None], other=0.0).to(tl.float32)
    dtype = qkv_ptr.dtype.element_ty
    if HAS_NORM:
        inv = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / HEAD_DIM + eps)
        # [q; k] weights: row 1 for the k heads
        w_ptr = norm_ptr + (heads >= num_q_heads).to(tl.int32)[:, None] * HEAD_DIM + dims[None, :]
        # The norm's output is rounded to the model dtype before the rotation, as the
        # unfused layers round it.
        x1 = (x1 * inv[:, None] * tl.load(w_ptr).to(tl.float32)).to(dtype).to(tl.float32)
        x2 = (x2 * inv[:, None] * tl.load(w_ptr + HALF).to(tl.float32)).to(dtype).to(tl.float32)
    pos = tl.load(pos_ptr + token)
    cos = tl.load(cos_sin_ptr + pos * HEAD_DIM + dims).to(tl.float32)[None, :]
    sin = tl.load(cos_sin_ptr + pos * HEAD_DIM + HALF + dims).to(tl.float32)[None, :]
    out1 = (x1 * cos - x2 * sin).to(dtype)
    out2 = (x2 * cos + x1 * sin).to(dtype)
    tl.store(base, out1, mask=head_ok[:, None])
    tl.store(base + HALF, out2, mask=head_ok[:, None])
    if WRITE_KV:
        is_k = head_ok & (heads >= num_q_heads)
        kv_heads = num_heads - num_q_heads
        slot = tl.load(slot_ptr + token)  # int64
        # [2, blocks, block_size, kv_heads, dim]: the token's row of k head j, then V's
        row = cache_ptr + slot * kv_heads * HEAD_DIM + (heads - num_q_heads)[:, None] * HEAD_DIM
        row += dims[None, :]
        v = base + kv_heads * stride_h  # the v head after each k head
        v1 = tl.load(v, mask=is_k[:, None], other=0.0)
        v2 = tl.load(v + HALF, mask=is_k[:, None], other=0.0)
        _store_kv(row, out1, is_k, scale_ptr, QUANT, QUANT_MAX)
        _store_kv(row + HALF, out2, is_k, scale_ptr, QUANT, QUANT_MAX)
        _store_kv(row + v_offset, v1, is_k, scale_ptr + 1, QUANT, QUANT_MAX)
        _store_kv(row + v_offset + HALF, v2, is_k, scale_ptr + 1, QUANT, QUANT_MAX)


@triton.jit
def _store_kv(ptr, values, ok, scale_ptr, QUANT: tl.constexpr, QUANT_MAX: tl.constexpr):
    """Model-dtype ``values`` [heads, n] into the cache rows at ``ptr`` (rows ``ok``), as
    the cache stores them (``_as_stored``)."""
    tl.store(ptr, _as_stored(values, ptr, scale_ptr, QUANT, QUANT_MAX), mask=ok[:, None])


@triton.jit
def _as_stored(values, cache_ptr, scale_ptr, QUANT: tl.constexpr, QUANT_MAX: tl.constexpr):
    """``values`` in the cache's dtype: an FP8 cache takes value / scale, saturated to the
    format's range; a 16-bit one the values as they are. The one rule of both KV writes."""
    if QUANT:
        values = tl.clamp(values.to(tl.float32) / tl.load(scale_ptr), -QUANT_MAX, QUANT_MAX)
    return values.to(cache_ptr.dtype.element_ty)


def rope_qk(
    qkv: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    qk_norm: torch.Tensor | None = None,
    eps: float = 1e-6,
    kv_write: KVWrite | None = None,
) -> None:
    """qkv: [tokens, q heads + 2 * kv heads, head_dim]; rotates the q and k heads in place.
    cos_sin_cache: [max_position, head_dim] (cos for the first half of the columns);
    qk_norm: optional [2, head_dim] RMSNorm weights (q's, then k's); ``kv_write``: the
    rotated k heads and the v heads also go into that paged cache, as ``write_kv`` puts
    them."""
    tokens, _, dim = qkv.shape
    assert qkv.stride(2) == 1 and cos_sin_cache.shape[1] == dim, "rope_qk: bad shapes"
    assert cos_sin_cache.is_contiguous() and positions.dtype == torch.int64
    assert qk_norm is None or (qk_norm.shape == (2, dim) and qk_norm.is_contiguous())
    num_heads = num_q_heads + num_kv_heads
    heads = min(8, triton.next_power_of_2(num_heads))  # 8 x 128 dims: 2 KiB of bf16 a program
    cache, slots, scale = kv_write if kv_write is not None else (qkv, positions, cos_sin_cache)
    quant = kv_write is not None and _check_kv_write(kv_write, qkv, num_kv_heads)
    _rope_qk_kernel[(tokens, triton.cdiv(num_heads, heads))](
        qkv, cos_sin_cache, positions, qk_norm if qk_norm is not None else cos_sin_cache, eps,
        qkv.stride(0), qkv.stride(1), num_q_heads, num_heads,
        cache, slots, scale, cache[0].numel() if kv_write is not None else 0,
        HEAD_DIM=dim, HALF=dim // 2, HAS_NORM=qk_norm is not None, HEADS=heads,
        WRITE_KV=kv_write is not None, QUANT=quant,
        QUANT_MAX=torch.finfo(cache.dtype).max if quant else 0.0,
        **dependent_launch.launch_args(qkv.device),
    )  # fmt: skip


def _check_kv_write(kv_write: KVWrite, qkv: torch.Tensor, num_kv_heads: int) -> bool:
    """Whether the cache is FP8 (quantized on the way in); asserts the layout."""
    cache, slots, scale = kv_write
    assert cache.is_contiguous() and cache.shape[0] == 2 and cache.dim() == 5
    assert cache.shape[3:] == (num_kv_heads, qkv.shape[2]), "rope_qk: cache shape"
    assert slots.dtype == torch.int64 and slots.shape[0] >= qkv.shape[0]
    return _quantized(cache, qkv.dtype, scale)


def _quantized(kv_cache: torch.Tensor, dtype: torch.dtype, kv_scale: torch.Tensor) -> bool:
    """Whether values of ``dtype`` are quantized into ``kv_cache`` (an FP8 cache), whose
    scales ``kv_scale`` must then be [2] float32 (K's, V's)."""
    quant = kv_cache.dtype != dtype
    assert not quant or (kv_scale.dtype == torch.float32 and kv_scale.numel() == 2)
    return quant


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr, scale_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, v_offset,
    KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, QUANT: tl.constexpr,
    QUANT_MAX: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    await_inputs(PDL)
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token)
    heads = tl.arange(0, KV_HEADS)
    dims = tl.arange(0, HEAD_DIM)
    k = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :])
    v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :])
    row = slot * (KV_HEADS * HEAD_DIM) + heads[:, None] * HEAD_DIM + dims[None, :]
    tl.store(cache_ptr + row, _as_stored(k, cache_ptr, scale_ptr, QUANT, QUANT_MAX))
    tl.store(cache_ptr + v_offset + row, _as_stored(v, cache_ptr, scale_ptr + 1, QUANT, QUANT_MAX))


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scale: torch.Tensor,
) -> None:
    """k, v: [tokens, kv heads, dim] -> the cache [2, blocks, block_size, kv heads, dim].
    An FP8 cache stores ``value / kv_scale[0 or 1]`` (kv_scale: [2] float32, K's and V's)."""
    tokens, kv_heads, dim = k.shape
    assert kv_cache.is_contiguous() and k.stride(2) == 1 and v.stride(2) == 1
    assert triton.next_power_of_2(kv_heads) == kv_heads, "write_kv: kv heads must be 2^n"
    quant = _quantized(kv_cache, k.dtype, kv_scale)
    _write_kv_kernel[(tokens,)](
        k, v, kv_cache, slot_mapping, kv_scale,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), kv_cache[0].numel(),
        KV_HEADS=kv_heads, HEAD_DIM=dim, QUANT=quant,
        QUANT_MAX=torch.finfo(kv_cache.dtype).max if quant else 0.0,
        **dependent_launch.launch_args(k.device),
    )  # fmt: skip
