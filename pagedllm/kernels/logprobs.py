"""The raw logprobs of a batch in one read of the logits (CUDA).

What logprobs need from a [rows, vocab] row: its logsumexp, the number of logits above the
sampled token's (its rank) and the k largest logits with their ids. Done with torch these
are three or more passes over the vocabulary, and ``torch.topk``'s radix select alone
reads it several times. Here each program takes one block of one row, in the logits' own
dtype, and writes the block's partial results: its max and sum of ``exp(x - max)``, its
count above the sampled logit, and its k largest (k rounds of max-and-remove, k small).
A second, tiny stage in torch merges the blocks: ``num_blocks * k`` candidates per row, of
which the row's top k are exactly the top k of the whole row (each block offered its own k
largest, so no member of the row's top k is missing).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The most top-k alternatives the kernel serves: the OpenAI API's ``top_logprobs`` limit
# and vLLM's default ``max_logprobs``. Larger k (``logprobs=-1``) goes to torch.
MAX_FUSED_K = 20
_BLOCK = 4096


@triton.jit
def _logprobs_kernel(
    logits_ptr, chosen_ptr, max_ptr, sum_ptr, above_ptr, top_val_ptr, top_col_ptr,
    vocab, stride, num_blocks, K: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    block = tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    base = logits_ptr + row.to(tl.int64) * stride
    x = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
    chosen_logit = tl.load(base + tl.load(chosen_ptr + row)).to(tl.float32)
    out = row * num_blocks + block
    block_max = tl.max(x, axis=0)
    # A block of -inf only (masked off or banned by the model) adds exp(-inf) = 0.
    shift = tl.where(block_max == float("-inf"), 0.0, block_max)
    tl.store(max_ptr + out, block_max)
    tl.store(sum_ptr + out, tl.sum(tl.exp(x - shift), axis=0))
    tl.store(above_ptr + out, tl.sum((x > chosen_logit).to(tl.int32), axis=0))
    for i in tl.static_range(K):
        best = tl.max(x, axis=0)
        # The first column holding the max; removed so the next round finds the next one.
        col = tl.min(tl.where(x == best, cols, vocab + BLOCK), axis=0)
        tl.store(top_val_ptr + out * K + i, best)
        tl.store(top_col_ptr + out * K + i, col)
        x = tl.where(cols == col, float("-inf"), x)


def fused_logprobs(
    logits: torch.Tensor, chosen: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits: [rows, vocab], any float dtype, unit column stride; chosen: [rows] int64.
    Returns (top_ids [rows, k] int64, top_logprobs [rows, k] float32, chosen_logprobs
    [rows] float32, chosen_ranks [rows] int64), the same as log_softmax, gather and topk
    would give (ties among equal logits may pick other ids of the same value)."""
    rows, vocab = logits.shape
    assert 0 <= k <= min(MAX_FUSED_K, vocab), f"fused logprobs: k={k} out of range"
    assert logits.stride(1) == 1 and chosen.shape == (rows,)
    num_blocks = triton.cdiv(vocab, _BLOCK)
    device = logits.device
    maxes = torch.empty(rows, num_blocks, device=device, dtype=torch.float32)
    sums = torch.empty_like(maxes)
    above = torch.empty(rows, num_blocks, device=device, dtype=torch.int32)
    top_vals = torch.empty(rows, num_blocks * max(k, 1), device=device, dtype=torch.float32)
    top_cols = torch.empty(rows, num_blocks * max(k, 1), device=device, dtype=torch.int32)
    chosen = chosen.contiguous()
    _logprobs_kernel[(rows, num_blocks)](
        logits, chosen, maxes, sums, above, top_vals, top_cols,
        vocab, logits.stride(0), num_blocks, K=k, BLOCK=_BLOCK, num_warps=8,
    )  # fmt: skip
    row_max = maxes.max(dim=1, keepdim=True).values
    lse = row_max.squeeze(1) + (sums * (maxes - row_max).exp()).sum(dim=1).log()
    chosen_lp = logits.gather(1, chosen.unsqueeze(1)).squeeze(1).float() - lse
    ranks = above.sum(dim=1, dtype=torch.int64) + 1
    top, picked = top_vals.topk(k, dim=1)
    top_ids = top_cols.gather(1, picked).long()
    return top_ids, top - lse.unsqueeze(1), chosen_lp, ranks
