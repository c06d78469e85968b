"""Sampling with temperature in one pass over the logits (CUDA): the Gumbel-max trick.

``argmax_i(l_i / T + g_i)`` with ``g_i`` standard Gumbel noise (``-log(-log(u))``, u
uniform) picks token i with probability ``softmax(l / T)_i``: the same distribution as the
sampler's exponential race over ``softmax(l / T)``, without materialising the probabilities.
The torch path reads and writes the [rows, vocab] float32 logits five times (divide,
softmax, draw, divide, argmax: ~0.5 ms a step at 256 rows of a 152k vocabulary on an
H200); this reads them once and draws the noise in registers (Philox, ``tl.rand``).

Randomness: row r of a call draws from the Philox stream keyed ``seed + r``; counter k
gives the four uniforms of columns 4k .. 4k + 3 (one Philox4x32 evaluation serves four
columns: the generator, ~40 integer instructions a call, not the logits' bytes, bounds this
kernel), so a call is a pure function of (logits, temperature, seed). The caller passes a
new seed each step; rows with their own generator (seeded requests) do not come here
(their draws must come from that generator).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048  # columns a program reads per step
CHUNK = 16384  # columns per program: 152k-token vocabularies split 10 ways per row


@triton.jit
def _race(best_value, best_index, row_ptr, cols, end, bits, inv_t):
    """One column of each lane's group of four into the lane's running best: the column's
    Gumbel-perturbed score from its 32 random bits. A lane's columns come in increasing
    order and only a strictly larger score replaces its best, so each lane keeps its first
    column at its maximum."""
    ok = cols < end
    logit = tl.load(row_ptr + cols, mask=ok, other=float("-inf")).to(tl.float32)
    u = tl.uint_to_uniform_float(bits)  # [0, 1): u = 0 gives -inf noise, never picked
    value = tl.where(ok, logit * inv_t - tl.log(-tl.log(u)), float("-inf"))
    better = value > best_value
    return tl.where(better, value, best_value), tl.where(better, cols, best_index)


# A new seed every step: specializing on it would compile a variant whenever it is a
# multiple of 16 (one stall of the step that meets it first).
@triton.jit(do_not_specialize=["seed"])
def _gumbel_argmax_kernel(
    logits_ptr, temperature_ptr, value_ptr, index_ptr, vocab, stride_row, seed,
    NUM_CHUNKS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """The best (value, column) of one row's columns [part * CHUNK, (part + 1) * CHUNK).
    Invariant: CHUNK and BLOCK are multiples of 4 (a group of four never straddles two)."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    inv_t = 1.0 / tl.load(temperature_ptr + row)
    start = part * CHUNK
    end = tl.minimum(start + CHUNK, vocab)
    best_value = tl.full([BLOCK // 4], float("-inf"), tl.float32)
    best_index = tl.zeros([BLOCK // 4], tl.int32)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    for offset in range(0, CHUNK, BLOCK):  # constant bounds: Triton's interpreter runs it too
        group = (start + offset) // 4 + tl.arange(0, BLOCK // 4)
        r0, r1, r2, r3 = tl.randint4x(seed + row, group)
        cols = group * 4
        best_value, best_index = _race(best_value, best_index, row_ptr, cols, end, r0, inv_t)
        best_value, best_index = _race(best_value, best_index, row_ptr, cols + 1, end, r1, inv_t)
        best_value, best_index = _race(best_value, best_index, row_ptr, cols + 2, end, r2, inv_t)
        best_value, best_index = _race(best_value, best_index, row_ptr, cols + 3, end, r3, inv_t)
    top = tl.max(best_value, axis=0)
    # The first column at the maximum (ties: the lowest index, as argmax).
    column = tl.min(tl.where(best_value == top, best_index, 2147483647), axis=0)
    tl.store(value_ptr + row * NUM_CHUNKS + part, top)
    tl.store(index_ptr + row * NUM_CHUNKS + part, column)


def gumbel_sample(logits: torch.Tensor, temperature: torch.Tensor, seed: int) -> torch.Tensor:
    """One token id per row (int64), drawn from ``softmax(logits / temperature)``.

    logits: [rows, vocab] float (unit column stride); temperature: [rows] float32, > 0;
    seed: 0 <= seed < 2**31 - rows (each row keys its own stream with ``seed + row``)."""
    rows, vocab = logits.shape
    if logits.stride(1) != 1 or temperature.shape != (rows,):
        raise ValueError(f"gumbel_sample: logits {tuple(logits.shape)} (unit column stride), "
                         f"temperature {tuple(temperature.shape)}")  # fmt: skip
    if not 0 <= seed < 2**31 - rows:
        raise ValueError(f"gumbel_sample: seed {seed} out of range")
    if rows == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    assert BLOCK % 4 == 0 and CHUNK % BLOCK == 0, "the kernel's groups of four columns"
    chunks = triton.cdiv(vocab, CHUNK)
    values = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    indices = torch.empty((rows, chunks), dtype=torch.int32, device=logits.device)
    _gumbel_argmax_kernel[(rows, chunks)](
        logits, temperature, values, indices, vocab, logits.stride(0), seed,
        NUM_CHUNKS=chunks, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=8,
    )  # fmt: skip
    best = values.argmax(dim=1, keepdim=True)
    return indices.gather(1, best).squeeze(1).to(torch.int64)
