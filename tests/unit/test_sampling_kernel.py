"""The one-pass temperature sampler (``kernels/sampling.gumbel_sample``): on the GPU when
there is one, else under Triton's CPU interpreter in a subprocess with small tiles (the
interpreter is chosen when triton is imported). Exact properties here; its distribution
against softmax(logits / T) over many draws is checked on the GPU, where draws are cheap."""

from __future__ import annotations

import textwrap

import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.kernels import sampling

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # several chunks and steps per row on a small vocabulary
        sampling.CHUNK, sampling.BLOCK = 16, 8
    draw = sampling.gumbel_sample
    vocab = 37  # not a multiple of the chunk: the last chunk is partial
    torch.manual_seed(0)
    logits = torch.randn(vocab, device=device) * 3
    logits[5] = float("-inf")  # a banned token
    logits[30] = logits.max() + 5.0  # the most likely token, in the last chunk
    rows = 16
    batch = logits.expand(rows, -1).contiguous()
    # A small temperature leaves only the top token (its lead is 100 nats).
    cold = draw(batch, torch.full((rows,), 0.05, device=device), 7)
    assert cold.dtype == torch.int64 and cold.tolist() == [30] * rows, cold
    # A large one spreads the draws, never onto the banned token, always inside the vocab.
    hot_t = torch.full((rows,), 50.0, device=device)
    hot = draw(batch, hot_t, 11)
    assert len(set(hot.tolist())) > 5 and 5 not in hot.tolist(), hot
    assert int(hot.min()) >= 0 and int(hot.max()) < vocab
    # A pure function of the seed; another seed draws otherwise; rows differ from each other.
    assert torch.equal(draw(batch, hot_t, 11), hot)
    assert not torch.equal(draw(batch, hot_t, 12), hot)
    # Each row its own temperature: the cold rows keep the top token.
    mixed_t = torch.tensor([0.05, 50.0] * (rows // 2), device=device)
    mixed = draw(batch, mixed_t, 3)
    assert mixed[0::2].tolist() == [30] * (rows // 2)
    if device == "cuda":  # frequencies against softmax(logits / T) over 200k draws
        t = 1.7
        many = logits.expand(200_000, -1).contiguous()
        got = draw(many, torch.full((200_000,), t, device=device), 5)
        freq = torch.bincount(got, minlength=vocab).double() / got.numel()
        want = (logits.double() / t).softmax(-1)
        assert (freq - want).abs().max() < 0.005, (freq, want)
    print("SAMPLING_OK")
    """
)


def test_gumbel_sample() -> None:
    if torch.cuda.is_available():
        exec(compile(CHECK, "sampling_check", "exec"), {})
        return
    run_interpreted(CHECK, "SAMPLING_OK", timeout=600)
