"""The Sampler's one-pass path on CUDA: bfloat16 logits drawn without a float32 copy,
greedy rows beside tempered ones, the same distribution as softmax(logits / T)."""

from __future__ import annotations

import torch

from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.sampler import Sampler, _temperature_only, _unprocessed


def test_bf16_logits_with_greedy_rows() -> None:
    torch.manual_seed(0)
    vocab, rows, t = 64, 100_000, 0.8
    row = (torch.randn(vocab, device="cuda") * 2).to(torch.bfloat16)
    logits = row.expand(rows, -1).contiguous()
    greedy = torch.zeros(rows, dtype=torch.bool, device="cuda")
    greedy[::10] = True
    md = SamplingMetadata(
        temperature=torch.where(greedy, 1.0, t).float(), greedy=greedy, all_greedy=False,
        all_random=False, top_k=None, top_p=None, min_p=None,
    )  # fmt: skip
    assert _unprocessed(md) and _temperature_only(logits, md)
    tokens = Sampler()(logits, md).token_ids
    top = int(row.float().argmax())
    assert (tokens[greedy] == top).all()
    drawn = tokens[~greedy]
    freq = torch.bincount(drawn, minlength=vocab).double() / drawn.numel()
    want = (row.double() / t).softmax(-1)
    assert (freq - want).abs().max() < 0.006
