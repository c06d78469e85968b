"""The attention backend contract."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pagedllm.attention.metadata import CommonAttentionMetadata


class AttentionBackend(Protocol):
    """Writes a step's new K/V into the paged cache and attends over it.

    ``build_metadata`` turns the runner's common description of the batch into whatever the
    backend's kernels want (built once per step, shared by all layers); ``forward`` is
    called once per layer.

    The cache holds the model's dtype, or FP8 (``kv_cache.dtype`` says which): then a
    value v is stored as ``v / scale`` saturated to the format's range and read back as
    ``stored * scale``, with one scale per layer for K and one for V (``kv_scale``). Every
    query attends to K/V read back from the cache, so a prompt sees the same values
    whether it was computed in one chunk or several.

    ``window`` (per layer): a query at position p sees keys p - window + 1 .. p (sliding
    window attention, as transformers defines it); None: keys 0 .. p.
    """

    def build_metadata(self, common: CommonAttentionMetadata) -> Any: ...

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        metadata: Any,
        scale: float,
        kv_scale: torch.Tensor,  # [2] float32: K's and V's scales, read when the cache is FP8
        window: int | None = None,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        ...


def create_backend(device: str) -> AttentionBackend:
    """Triton kernels on CUDA (PAGEDLLM_ATTENTION_BACKEND=torch forces the portable torch
    backend, the reference); the torch backend elsewhere."""
    from pagedllm import envs

    if device == "cuda" and envs.attention_backend() != "torch":
        import torch

        from pagedllm.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(torch.device("cuda"))
    from pagedllm.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend()
