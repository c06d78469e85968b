"""The fused logprobs kernel against log_softmax + gather + topk in float32, every
element checked: odd vocabulary sizes, bfloat16 ties, k from 0 to its limit, -inf logits."""

from __future__ import annotations

import pytest
import torch

from pagedllm.kernels.logprobs import MAX_FUSED_K, fused_logprobs
from pagedllm.sample.logprobs import compute_logprobs, raw_logprobs


def check(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> None:
    top_ids, top_lps, chosen_lp, ranks = fused_logprobs(logits, chosen, k)
    expected = compute_logprobs(logits.float(), chosen, k)
    torch.testing.assert_close(chosen_lp, expected.chosen_logprobs, rtol=1e-5, atol=1e-5)
    # Ranks count the logits above the chosen one, as the sampler does (a log_softmax can
    # round two different logits to one value).
    raw = logits.float()
    assert torch.equal(ranks, (raw > raw.gather(1, chosen[:, None])).sum(dim=-1) + 1)
    torch.testing.assert_close(top_lps, expected.top_logprobs, rtol=1e-5, atol=1e-5)
    # Ties may pick other ids of the same value: each id must hold its reported logprob,
    # and no id may repeat within a row.
    full = torch.log_softmax(logits.float(), dim=-1)
    torch.testing.assert_close(full.gather(1, top_ids), top_lps, rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == k for row in top_ids.tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 7), (37, 1000), (5, 4097), (256, 151936)])
@pytest.mark.parametrize("k", [0, 1, 5, MAX_FUSED_K])
def test_kernel_matches_log_softmax(dtype: torch.dtype, rows: int, vocab: int, k: int) -> None:
    if k > vocab:
        pytest.skip("k above the vocabulary")
    g = torch.Generator(device="cuda").manual_seed(rows * vocab + k)
    logits = (torch.randn(rows, vocab, device="cuda", generator=g) * 4).to(dtype)
    chosen = torch.randint(0, vocab, (rows,), device="cuda", generator=g)
    check(logits, chosen, k)


def test_rows_with_banned_tokens_and_large_k_fallback() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(8, 9000, device="cuda", generator=g)
    logits[:, 4096:8192] = float("-inf")  # a whole block of -inf
    logits[3, :4000] = float("-inf")
    chosen = logits.argmax(dim=-1)
    check(logits, chosen, 5)
    # Above the kernel's limit the sampler's entry point takes torch's path, same shapes.
    out = raw_logprobs(logits, chosen, MAX_FUSED_K + 1)
    assert out.top_ids.shape == (8, MAX_FUSED_K + 1)
