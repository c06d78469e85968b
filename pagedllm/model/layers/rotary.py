"""Rotary position embedding (neox / "rotate half" layout) with the scaling variants of the
supported families: default, linear, llama3 and yarn.

The cos/sin table is computed once for every position up to ``max_position`` and gathered by
position once per forward pass; every layer reuses the gathered rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_parameters(config: Any) -> dict[str, Any]:
    """Rope settings from a transformers config, old style (rope_theta + rope_scaling) or new
    (rope_parameters), as one dict with ``rope_type`` and ``rope_theta``."""
    params = getattr(config, "rope_parameters", None)
    merged = dict(params) if params else dict(getattr(config, "rope_scaling", None) or {})
    merged.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    merged["rope_type"] = merged.get("rope_type") or merged.get("type") or "default"
    return merged


def inv_freq_and_scaling(
    params: dict[str, Any], dim: int, max_position: int
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [dim / 2] (float32) and the factor cos/sin are multiplied by."""
    rope_type = params["rope_type"]
    base = float(params["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / float(params["factor"]), 1.0
    if rope_type == "llama3":
        return _llama3(inv_freq, params), 1.0
    if rope_type == "yarn":
        return _yarn(params, base, dim, max_position)
    raise ValueError(
        f"Rope scaling type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}."
    )


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_len = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(
    params: dict[str, Any], base: float, dim: int, max_position: int
) -> tuple[torch.Tensor, float]:
    factor = params["factor"]
    original = params.get("original_max_position_embeddings") or max_position
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation_factor = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_factor) + (
        1.0 / pos_freqs
    ) * extrapolation_factor
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """Applies rotary embedding to q and k: [num_tokens, heads, head_dim] each."""

    def __init__(
        self, head_dim: int, max_position: int, params: dict[str, Any], dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq, scaling = inv_freq_and_scaling(params, head_dim, max_position)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        # [max_position, head_dim]: cos for the first half of the columns, sin for the rest.
        cache = torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1).to(dtype)
        self.cos_sin_cache: torch.Tensor
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather once per step: cos, sin of shape [num_tokens, 1, head_dim / 2]."""
        cos, sin = self.cos_sin_cache.index_select(0, positions).chunk(2, dim=-1)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x * cos + rotate_half(x) * sin, the transformers formula, half by half."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
