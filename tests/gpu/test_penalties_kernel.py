"""The fused penalties kernel against the torch reference, every element checked: odd
vocabulary sizes, table rows reached through slots (slot 0 the neutral row), logits of
both signs, counts of zero and more."""

from __future__ import annotations

import pytest
import torch

from pagedllm.kernels.penalties import apply_penalties_inplace
from pagedllm.sample.metadata import PenaltyInputs
from pagedllm.sample.penalties import _apply_penalties, apply_penalties


@pytest.mark.parametrize(
    ("rows", "vocab", "table_rows"), [(1, 7, 2), (37, 1000, 9), (256, 151936, 300)]
)
def test_kernel_matches_the_torch_reference(rows: int, vocab: int, table_rows: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(rows)
    logits = torch.randn(rows, vocab, device="cuda", generator=g) * 5
    prompt = torch.rand(table_rows, vocab, device="cuda", generator=g) < 0.1
    counts = torch.randint(0, 4, (table_rows, vocab), device="cuda", generator=g).float()
    counts *= torch.rand(table_rows, vocab, device="cuda", generator=g) < 0.05
    prompt[0], counts[0] = False, 0.0  # the neutral row
    slots = torch.randint(0, table_rows, (rows,), device="cuda", generator=g)
    presence, frequency = (torch.rand(rows, device="cuda", generator=g) * 4 - 2 for _ in "pf")
    repetition = torch.rand(rows, device="cuda", generator=g) * 1.5 + 0.5
    expected = _apply_penalties(
        logits.clone(),
        PenaltyInputs(prompt[slots], counts[slots], presence, frequency, repetition),
    )
    actual = logits.clone()
    apply_penalties_inplace(actual, prompt, counts, slots, presence, frequency, repetition)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-5)
    # The sampler's entry point takes the kernel for tables with slots.
    inputs = PenaltyInputs(prompt, counts, presence, frequency, repetition, slots=slots)
    torch.testing.assert_close(
        apply_penalties(logits.clone(), inputs), expected, rtol=1e-6, atol=1e-5
    )
