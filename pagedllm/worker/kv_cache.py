"""KV cache sizing and allocation (layout: see ``pagedllm.attention``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.config import CacheConfig, ModelConfig

GiB = float(1 << 30)
_FP8_CACHE = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def kv_cache_dtype(
    cache_config: CacheConfig, model_dtype: torch.dtype, device: torch.device
) -> torch.dtype:
    """The torch dtype the cache stores: the model's, or an FP8 format. The CUDA kernels
    widen e4m3 with the conversion instructions of compute capability 8.9+."""
    dtype = _FP8_CACHE.get(cache_config.cache_dtype)
    if dtype is None:
        return model_dtype
    if (
        dtype == torch.float8_e4m3fn
        and device.type == "cuda"
        and torch.cuda.get_device_capability(device) < (8, 9)
    ):
        raise ValueError(
            "kv_cache_dtype='fp8_e4m3' needs a GPU of compute capability 8.9 or newer (Ada, "
            "Hopper); use kv_cache_dtype='fp8_e5m2' or 'auto' on this one."
        )
    return dtype


# Bytes saved ahead to the host tier per CUDA step: copied beside the step's forward pass by
# a few SMs at ~45 GB/s, 64 MiB take ~1.5 ms, less than the steps the next one waits behind.
SAVE_AHEAD_BYTES = 64 << 20


@dataclass(frozen=True)
class KVCachePlan:
    num_blocks: int
    block_size: int
    bytes_per_token: int
    # Blocks of the host tier (``swap_space``), the same size as the device's; 0: none.
    num_host_blocks: int = 0

    @property
    def num_host_bytes(self) -> int:
        return self.num_host_blocks * self.block_size * self.bytes_per_token

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_bytes(self) -> int:
        return self.num_tokens * self.bytes_per_token

    def save_ahead_blocks(self, device: str) -> int:
        """Blocks saved ahead to the host tier per step (``BlockPool.save_ahead``): with
        CUDA, ``SAVE_AHEAD_BYTES`` of them; on the CPU none (nothing runs beside a step
        there, so a save ahead would cost what a save on eviction costs, or be wasted)."""
        if not self.num_host_blocks or device != "cuda":
            return 0
        return max(1, SAVE_AHEAD_BYTES // (self.block_size * self.bytes_per_token))

    def max_concurrency(self, max_model_len: int) -> float:
        blocks_per_request = -(-max_model_len // self.block_size)
        return self.num_blocks / blocks_per_request


def plan_kv_cache(
    model_config: ModelConfig,
    cache_config: CacheConfig,
    available_bytes: int,
    where: str,
    per_token: int | None = None,
) -> KVCachePlan:
    """Blocks that fit in ``available_bytes``; fail if one max_model_len request cannot fit.

    ``where`` names the budget in the error ("kv_cache_memory_bytes=...", GPU figures...).
    ``per_token``: one rank's bytes per token with tensor or pipeline parallelism (its KV
    heads of its layers); the whole model's by default.
    """
    if per_token is None:
        per_token = model_config.kv_bytes_per_token(cache_config.cache_dtype)
    block_size = cache_config.block_size
    num_blocks = available_bytes // (per_token * block_size)
    num_host_blocks = cache_config.swap_space_bytes // (per_token * block_size)
    if cache_config.swap_space_bytes and num_host_blocks == 0:
        raise ValueError(
            "The host KV tier (swap_space, or kv_offloading_size shared by the ranks) gives "
            f"each rank {_gib(cache_config.swap_space_bytes)}, which holds no KV block (one "
            f"block is {_gib(per_token * block_size)}); increase it or leave it unset."
        )
    plan = KVCachePlan(int(num_blocks), block_size, per_token, int(num_host_blocks))
    max_len = model_config.max_model_len
    needed_blocks = -(-max_len // block_size)
    if num_blocks < needed_blocks:
        needed = needed_blocks * block_size * per_token
        fits = min(plan.num_tokens, max_len)
        raise ValueError(
            f"To serve one request of max_model_len={max_len} tokens, the KV cache needs "
            f"{_gib(needed)}, but only {_gib(available_bytes)} is available "
            f"({where}). The largest max_model_len that fits is {fits}. Increase the KV cache "
            "budget or decrease max_model_len."
        )
    return plan


def allocate_kv_caches(
    model_config: ModelConfig,
    plan: KVCachePlan,
    dtype: torch.dtype,
    device: torch.device,
    extra_blocks: int = 0,
    num_kv_heads: int | None = None,
    layers: range | None = None,
) -> list[torch.Tensor]:
    """One zero-filled tensor per layer (``extra_blocks`` beyond the plan's, outside the
    block pool, for scratch). Zeros, not empty: padded positions of a gathered block are
    masked out of attention, and masked garbage must still be finite. With parallelism,
    ``num_kv_heads`` is this rank's and only its stage's ``layers`` get a cache (the list
    stays indexed by layer; other stages' entries are empty)."""
    blocks = plan.num_blocks + extra_blocks
    heads = model_config.num_kv_heads if num_kv_heads is None else num_kv_heads
    shape = (2, blocks, plan.block_size, heads, model_config.head_dim)
    if layers is None:
        return [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(model_config.num_layers)
        ]
    return [
        torch.zeros(shape if i in layers else (0,), dtype=dtype, device=device)
        for i in range(model_config.num_layers)
    ]


def _gib(num_bytes: int) -> str:
    """GiB with three significant digits, so small budgets do not all read '0.01 GiB'."""
    return f"{num_bytes / GiB:.3g} GiB"
