"""Gated activations: the MLP computes act(gate) * up from one merged projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_ACTIVATIONS = ("silu",)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [..., 2 * d] with the gate first -> [..., d]. The torch definition; a CUDA
    model's layers run ``cuda_ops``' fused kernel instead."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
