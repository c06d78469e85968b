"""Token embedding and LM head (which may share the embedding's weight)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from pagedllm.model.layers.device_ops import DeviceOps


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype), False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Hidden states -> logits over the vocabulary in the model's dtype, by the device's
    product. Not widened here: a bfloat16 model's logits are bfloat16 values whatever their
    container, and the sampler's one-pass and logprob kernels widen each as they read it
    (a float32 copy of a 256 x 152k step is 0.23 GB written and read again); the paths that
    change logits take a float32 copy (``Sampler``)."""

    def __init__(
        self, vocab_size: int, hidden_size: int, dtype: torch.dtype, ops: DeviceOps
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype), False)
        self.ops = ops

    def tie(self, embedding: VocabEmbedding) -> None:
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # contiguous(): the CPU's product is a transposed view (a no-op elsewhere).
        return self.ops.linear(hidden, self.weight, None).contiguous()


@dataclass(frozen=True)
class VocabLayers:
    """How a model without tensor parallelism builds its token embedding and LM head:
    ``embedding(vocab_size, hidden_size, dtype)``, ``lm_head(vocab_size, hidden_size,
    dtype, ops)``; the LM head's ``tie(embedding)`` shares the embedding's table."""

    embedding: Callable[[int, int, torch.dtype], nn.Module] = VocabEmbedding
    lm_head: Callable[[int, int, torch.dtype, DeviceOps], nn.Module] = LMHead


PLAIN_VOCAB = VocabLayers()  # tables in the model's dtype
