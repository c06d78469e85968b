"""Structured outputs' token bitmask on the logits: disallowed tokens to -inf.

The bitmask is xgrammar's: int32 words, bit j of a row set when token j may come next. It is
filled on the host, one row per sampled row of the batch (only the rows in ``rows`` are
filled and applied), and applied in one batched op: xgrammar's Triton kernel on CUDA, its
C++ loop on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GrammarBitmask:
    bitmask: torch.Tensor  # int32 [num_sampled_rows, ceil(vocab / 32)], on the host
    rows: list[int]  # the sampled rows a grammar constrains, ascending


def apply_grammar_bitmask(logits: torch.Tensor, mask: GrammarBitmask) -> None:
    """In place on float32 ``logits`` [num_sampled_rows, vocab]."""
    import xgrammar as xgr

    bitmask = mask.bitmask
    if bitmask.device != logits.device:
        bitmask = bitmask.to(logits.device, non_blocking=True)
    indices = None if len(mask.rows) == logits.shape[0] else mask.rows
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[-1], indices=indices)
