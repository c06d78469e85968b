"""The attention backend contract."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pagedllm.attention.metadata import CommonAttentionMetadata
from pagedllm.logger import init_logger

logger = init_logger(__name__)


class AttentionBackend(Protocol):
    """Writes a step's new K/V into the paged cache (unless the layer did, with its rotary
    op: ``slot_mapping``, ``kv_written``) and attends over it.

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

    CUDA graphs: the runner captures a graph per padded batch shape on metadata from
    ``capture_metadata`` and replays it after writing each later batch of that shape into
    the same persistent input buffers; no backend code runs at replay. So that metadata
    reaches the step's values only through the tensors of ``common`` (views of those
    buffers), its host values (request count, launch shape, ``num_segments``) are those of
    the padded shape, and any scratch its kernels write is allocated outside the capture
    (when it is built, or at the latest in the eager warm-up passes the runner makes on it
    first) and kept for as long as the backend lives.
    """

    def segments_for(self, num_reqs: int, max_query_len: int, kv_heads: int) -> int:
        """Split-KV segments for a batch of this shape: how many programs share each
        request's KV range (flash-decoding); 1 for no split. The runner writes the answer
        into ``CommonAttentionMetadata.num_segments``; a captured graph keeps the one of
        its padded shape."""
        ...

    def build_metadata(self, common: CommonAttentionMetadata) -> Any: ...

    def slot_mapping(self, metadata: Any) -> torch.Tensor:
        """The step's cache slot of each token ([num_tokens] int64, padding at the scratch
        block): where a layer that writes its new K/V itself puts them (then ``forward``
        is called with ``kv_written=True``)."""
        ...

    def capture_metadata(self, common: CommonAttentionMetadata) -> Any:
        """Metadata for a CUDA graph captured on ``common`` and replayed for every batch
        of its padded shape (see the class). Raises ValueError when this backend's
        kernels cannot be captured."""
        ...

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
        kv_written: bool = False,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """Attention of q over the cache after the step's k and v are written into it at
        ``slot_mapping``'s slots, by this call or (``kv_written``) by the caller before it,
        stored as this contract says; k and v are passed either way."""
        ...


def create_backend(device: str) -> AttentionBackend:
    """Triton kernels on CUDA (PAGEDLLM_ATTENTION_BACKEND=torch forces the portable torch
    backend, the reference); the torch backend elsewhere, its decodes by pagedllm's C++
    kernel on the CPU where it is built."""
    from pagedllm import envs

    if device == "cuda" and envs.attention_backend() != "torch":
        import torch

        from pagedllm.attention.triton_backend import TritonAttentionBackend

        props = torch.cuda.get_device_properties(torch.device("cuda"))
        return TritonAttentionBackend(props.multi_processor_count)
    from pagedllm.attention.torch_backend import TorchAttentionBackend

    if device != "cpu":
        return TorchAttentionBackend()
    from pagedllm.kernels import cpu_extension

    reason = cpu_extension.unavailable_reason()
    if reason is not None:
        logger.warning("Decode attention by torch's SDPA: the CPU kernels are unavailable (%s)",
                       reason)  # fmt: skip
    return TorchAttentionBackend(cpu_kernels=reason is None)
