"""Tiny FP8 checkpoints, written here in each form a quantizer saves: the ``fp8`` method
(AutoFP8 / llm-compressor's older form) and compressed-tensors, per-tensor or per-channel
weight scales, dynamic, static or no activation scales, optional KV cache scales."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pagedllm.model.layers.fp8 import FP8_DTYPE, FP8_MAX, quantize_weight

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Distinct static input scales for q, k and v: the merged layer must take their max.
INPUT_SCALES = {"q_proj": 0.02, "k_proj": 0.05, "v_proj": 0.03}


def is_linear_weight(name: str) -> bool:
    return name.endswith(".weight") and any(f".{p}." in name for p in LINEARS)


def quantize_per_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = weight.float().abs().max() / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def save_fp8_checkpoint(
    src: Path,
    dst: Path,
    method: str,  # "fp8" | "compressed-tensors"
    weights: str,  # "tensor" | "channel"
    activations: str,  # "dynamic" | "static" | "none" (compressed-tensors only)
    kv_scales: dict[str, float] | None = None,  # checkpoint tensor suffix -> value
) -> dict[str, torch.Tensor]:
    """Write ``src`` (a float32 checkpoint directory) quantized to ``dst``; return the
    dequantized weights (``q * scale``) of the quantized tensors, by checkpoint name."""
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not is_linear_weight(name):
            out[name] = tensor
            continue
        if weights == "channel":
            q, scale = quantize_weight(tensor)
            dequantized[name] = q.float() * scale[:, None]
            # compressed-tensors saves channel scales as [out, 1]; the fp8 method as [out].
            scale = scale[:, None] if method == "compressed-tensors" else scale
        else:
            q, scale = quantize_per_tensor(tensor)
            dequantized[name] = q.float() * scale
            scale = scale.reshape(1) if method == "compressed-tensors" else scale.reshape(())
        module = name.removesuffix(".weight")
        out[name] = q
        out[f"{module}.weight_scale"] = scale.contiguous()
        if activations == "static":
            value = INPUT_SCALES.get(module.rsplit(".", 1)[1], 0.04)
            out[f"{module}.input_scale"] = torch.tensor([value])
    layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    for suffix, value in (kv_scales or {}).items():
        for i in range(layers):
            out[f"model.layers.{i}.self_attn.{suffix}"] = torch.tensor(value)
    save_file(out, str(dst / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = _quantization_config(method, weights, activations)
    (dst / "config.json").write_text(json.dumps(config))
    return dequantized


def _quantization_config(method: str, weights: str, activations: str) -> dict:
    if method == "fp8":
        return {"quant_method": "fp8", "activation_scheme": activations}
    float8 = {"num_bits": 8, "type": "float", "symmetric": True}
    inputs = {
        "dynamic": float8 | {"strategy": "token", "dynamic": True},
        "static": float8 | {"strategy": "tensor", "dynamic": False},
        "none": None,
    }[activations]
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": float8 | {"strategy": weights, "dynamic": False},
                "input_activations": inputs,
            }
        },
        "ignore": ["lm_head"],
    }


def save_dequantized_checkpoint(src: Path, dst: Path, dequantized: dict) -> None:
    """``src`` with its linear weights replaced by ``dequantized`` (float32, unquantized):
    what a quantized checkpoint's weights stand for."""
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    save_file(tensors | dequantized, str(dst / "model.safetensors"))
