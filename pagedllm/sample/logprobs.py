"""Log-probabilities of sampled tokens and the top-k alternatives.

Computed from the model's raw distribution (``log_softmax`` of the logits before
temperature, penalties or any processor), as vLLM does by default (``raw_logprobs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.core.scheduler_output import LogprobsLists


@dataclass
class LogprobsTensors:
    top_ids: torch.Tensor  # [rows, k] int64
    top_logprobs: torch.Tensor  # [rows, k] float32
    chosen_logprobs: torch.Tensor  # [rows] float32, of the given token
    chosen_ranks: torch.Tensor  # [rows] int64, 1 = most likely

    def to_lists(self, chosen: list[int], ks: list[int]) -> list[LogprobsLists]:
        """One LogprobsLists per row (a single position each), row i keeping ks[i] top-k.
        The row lists that ``tolist`` made are reused: this runs every step."""
        top_ids, top_lps = self.top_ids.tolist(), self.top_logprobs.tolist()
        lps, ranks = self.chosen_logprobs.tolist(), self.chosen_ranks.tolist()
        width = self.top_ids.shape[1]
        out = []
        for c, ids, tl, lp, rank, k in zip(chosen, top_ids, top_lps, lps, ranks, ks):
            if k < width:
                ids, tl = ids[:k], tl[:k]
            ids.insert(0, c)
            tl.insert(0, lp)
            out.append(LogprobsLists([ids], [tl], [rank]))
        return out


def raw_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> LogprobsTensors:
    """logits: [rows, vocab] the model's logits, unchanged; chosen: [rows] sampled ids.
    On CUDA, one fused pass (``kernels/logprobs.py``) for k up to its limit."""
    if logits.is_cuda:
        from pagedllm.kernels.logprobs import MAX_FUSED_K, fused_logprobs

        if k <= MAX_FUSED_K:
            return LogprobsTensors(*fused_logprobs(logits, chosen, k))
    return logprobs_from_lse(logits, torch.logsumexp(logits.float(), dim=-1), chosen, k)


def logprobs_from_lse(
    logits: torch.Tensor, lse: torch.Tensor, chosen: torch.Tensor, k: int
) -> LogprobsTensors:
    """The same as ``compute_logprobs`` without a [rows, vocab] log-softmax: logprob =
    logit - logsumexp is monotone in the logit, so the ranks and the top-k are taken on
    the logits as the model gave them (bfloat16 on a GPU: half the bytes to read; its
    values are exactly those the float32 logsumexp ``lse`` [rows] was taken over)."""
    chosen_logit = logits.gather(1, chosen.unsqueeze(1))
    ranks = (logits > chosen_logit).sum(dim=-1) + 1
    chosen_lp = chosen_logit.squeeze(1).float() - lse
    if k == 0:
        return LogprobsTensors(chosen[:, None][:, :0], chosen_lp[:, None][:, :0], chosen_lp, ranks)
    top, top_ids = logits.topk(k, dim=-1)
    return LogprobsTensors(top_ids, top.float() - lse.unsqueeze(1), chosen_lp, ranks)


def compute_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> LogprobsTensors:
    """logits: [rows, vocab] raw model logits; chosen: [rows] the token of each position."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen_lp = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1)
    ranks = (logprobs > chosen_lp.unsqueeze(1)).sum(dim=-1) + 1
    top_lp, top_ids = (
        logprobs.topk(k, dim=-1) if k > 0 else (logprobs[:, :0], chosen[:, None][:, :0])
    )
    return LogprobsTensors(top_ids, top_lp, chosen_lp, ranks)
