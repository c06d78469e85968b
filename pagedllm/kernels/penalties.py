"""Repetition, frequency and presence penalties in one pass over the logits (CUDA).

The token statistics live in per-request device tables (``worker/penalty_state.py``); the
kernel reads each batch row's table row through its slot, so no per-step copy of the
tables into batch order is made, and the eight elementwise kernels of the torch version
(``sample/penalties.py``, the reference) become one. Same arithmetic, in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _penalties_kernel(
    logits_ptr, prompt_ptr, counts_ptr, slots_ptr, presence_ptr, frequency_ptr, repetition_ptr,
    vocab, stride_logits, stride_prompt, stride_counts, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < vocab
    slot = tl.load(slots_ptr + row).to(tl.int64)
    x = tl.load(logits_ptr + row * stride_logits + cols, mask=ok, other=0.0)
    in_prompt = tl.load(prompt_ptr + slot * stride_prompt + cols, mask=ok, other=0)
    counts = tl.load(counts_ptr + slot * stride_counts + cols, mask=ok, other=0.0)
    repetition = tl.load(repetition_ptr + row)
    generated = counts > 0
    scaled = tl.where(x > 0, x / repetition, x * repetition)
    x = tl.where((in_prompt != 0) | generated, scaled, x)
    x -= tl.load(frequency_ptr + row) * counts
    x -= tl.load(presence_ptr + row) * generated.to(tl.float32)
    tl.store(logits_ptr + row * stride_logits + cols, x, mask=ok)


def apply_penalties_inplace(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_counts: torch.Tensor,
    slots: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
) -> None:
    """logits: [rows, vocab] float32, changed in place; prompt_mask (bool) and
    output_counts (float32): [table rows, vocab]; slots: [rows], each row's table row;
    presence / frequency / repetition: [rows] float32."""
    rows, vocab = logits.shape
    assert logits.dtype == torch.float32 and logits.stride(1) == 1, "penalties: bad logits"
    assert prompt_mask.dtype == torch.bool and output_counts.dtype == torch.float32
    assert prompt_mask.shape[1] == vocab and output_counts.shape[1] == vocab
    assert prompt_mask.stride(1) == 1 and output_counts.stride(1) == 1
    assert slots.shape == (rows,) and presence.shape == frequency.shape == repetition.shape
    grid = (rows, triton.cdiv(vocab, _BLOCK))
    _penalties_kernel[grid](
        logits, prompt_mask.view(torch.uint8), output_counts, slots,
        presence.contiguous(), frequency.contiguous(), repetition.contiguous(),
        vocab, logits.stride(0), prompt_mask.stride(0), output_counts.stride(0), BLOCK=_BLOCK,
    )  # fmt: skip
