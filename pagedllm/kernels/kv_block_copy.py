"""Whole KV blocks copied between one device cache layer and the host tier's pinned memory,
by a kernel that reads or writes the host memory itself (CUDA).

Pinned host memory is mapped into the device's address space, so a kernel can load from it
and store to it over the bus; one launch moves any set of (source, destination) blocks of a
layer, however scattered, where copy calls would need one call per run of consecutive host
slots and a device staging buffer to reorder them. Bytes, not values: callers pass the
tensors viewed as one integer type, so any cache dtype (FP8 included) is copied exactly.

A block's piece of one layer (K or V) is ``piece`` contiguous elements on both sides:
``src[kv * src_stride_kv + src_block * src_stride_block + i]`` for i < piece goes to the
same offsets of ``dst`` with its block and strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements a program moves at a time: 2,048 8-byte elements (16 KiB, 64 bytes a thread of
# its 8 warps), so a 32 KiB piece (llama-3.1-8b's 16-token block of one layer's K) is two
# items and a program keeps 16 KiB of bus reads in flight.
_CHUNK = 2048


@triton.jit
def _block_copy_kernel(
    src_ptr, dst_ptr, src_index_ptr, dst_index_ptr, src_stride_kv, src_stride_block,
    dst_stride_kv, dst_stride_block, num_items, items_per_program, PIECE: tl.constexpr,
    CHUNK: tl.constexpr,
):  # fmt: skip
    # Items (pair, K or V, chunk of the piece) are dealt round robin to the grid's programs:
    # one each when the grid covers them, several when the caller keeps the grid small.
    CHUNKS: tl.constexpr = (PIECE + CHUNK - 1) // CHUNK
    programs = tl.num_programs(0)
    for i in range(items_per_program):
        item = tl.program_id(0) + i * programs
        # Past the last item: the last item's addresses, nothing loaded or stored.
        end = tl.where(item < num_items, PIECE, 0)
        item = tl.minimum(item, num_items - 1)
        pair = item // (2 * CHUNKS)
        kv = ((item // CHUNKS) % 2).to(tl.int64)
        offs = (item % CHUNKS) * CHUNK + tl.arange(0, CHUNK)
        inside = offs < end
        # int64: a host tier or a cache layer may span more elements than int32 counts.
        src_block = tl.load(src_index_ptr + pair).to(tl.int64)
        dst_block = tl.load(dst_index_ptr + pair).to(tl.int64)
        src = src_ptr + kv * src_stride_kv + src_block * src_stride_block
        dst = dst_ptr + kv * dst_stride_kv + dst_block * dst_stride_block
        tl.store(dst + offs, tl.load(src + offs, mask=inside), mask=inside)


def copy_blocks(
    src: torch.Tensor,
    dst: torch.Tensor,
    src_index: torch.Tensor,
    dst_index: torch.Tensor,
    src_strides: tuple[int, int],
    dst_strides: tuple[int, int],
    piece: int,
    max_programs: int | None = None,
) -> None:
    """Copy K and V pieces of ``piece`` elements: pair j takes block ``src_index[j]`` of
    ``src`` to block ``dst_index[j]`` of ``dst``. ``*_strides`` are (K to V, block to
    block) in elements of the tensors' common dtype; the tensors' data pointers are where
    block 0's K starts. Indices are int64 on the device; either tensor may be pinned host
    memory. ``max_programs`` bounds the grid (so a copy running beside other kernels holds
    few SMs); None: a program per item."""
    if src.dtype != dst.dtype:
        raise ValueError(f"copy_blocks: {src.dtype} to {dst.dtype}; view both as one type")
    pairs = src_index.numel()
    if pairs != dst_index.numel():
        raise ValueError("copy_blocks: as many source as destination blocks are needed")
    if pairs == 0:
        return
    items = pairs * 2 * triton.cdiv(piece, _CHUNK)
    programs = items if max_programs is None else max(1, min(items, max_programs))
    _block_copy_kernel[(programs,)](
        src, dst, src_index, dst_index, *src_strides, *dst_strides, items,
        triton.cdiv(items, programs), PIECE=piece, CHUNK=_CHUNK, num_warps=8,
    )  # fmt: skip
