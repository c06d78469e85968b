"""Checkpoint tensor names -> where they load in ``CausalLM``.

Parameter names follow the Hugging Face checkpoints, except that q/k/v and gate/up merge
into one layer each (a checkpoint tensor then loads one shard of it), and the FP8 KV cache
scales, which quantizers spell several ways, all load into their layer's ``kv_scale``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Checkpoint module -> (merged module, shard index).
_STACKED = (
    (".q_proj.", ".qkv_proj.", 0),
    (".k_proj.", ".qkv_proj.", 1),
    (".v_proj.", ".qkv_proj.", 2),
    (".gate_proj.", ".gate_up_proj.", 0),
    (".up_proj.", ".gate_up_proj.", 1),
)

# The spellings of per-layer K and V cache scales: llm-compressor's ``self_attn.k_scale``,
# ModelOpt's ``k_proj.k_scale``, AutoFP8's ``k_proj.output_scale``, the older single
# ``kv_scale`` (K's and V's at once). Index 0 = K, 1 = V, None = both.
_KV_SCALES = (
    (re.compile(r"(.*\.self_attn)\.(?:k_proj\.|qkv_proj\.)?k_scale$"), 0),
    (re.compile(r"(.*\.self_attn)\.(?:v_proj\.|qkv_proj\.)?v_scale$"), 1),
    (re.compile(r"(.*\.self_attn)\.k_proj\.output_scale$"), 0),
    (re.compile(r"(.*\.self_attn)\.v_proj\.output_scale$"), 1),
    (re.compile(r"(.*\.self_attn)\.kv_scale$"), None),
)
# Scales of FP8 attention arithmetic (quantized queries and probabilities). pagedllm
# attends in the model's dtype, where these have no meaning; the checkpoint is still whole.
_ATTENTION_MATH_SCALES = re.compile(
    r".*\.self_attn\.(?:q_scale|prob_scale|prob_output_scale|q_proj\.(?:output_scale|q_scale))$"
)


@dataclass(frozen=True)
class KVScaleTarget:
    attention: str  # the attention module's name
    index: int | None  # 0: K, 1: V, None: both


def kv_scale_target(name: str) -> KVScaleTarget | str | None:
    """A KV cache scale's target; "skip" for a scale of FP8 attention arithmetic; None for
    any other tensor. Zero points (asymmetric caches) are refused."""
    if name.endswith("_zero_point") and ".self_attn." in name:
        raise ValueError(
            f"Checkpoint tensor {name!r}: asymmetric (zero-point) KV cache quantization is "
            "not supported."
        )
    for pattern, index in _KV_SCALES:
        match = pattern.fullmatch(name)
        if match:
            return KVScaleTarget(match.group(1), index)
    if _ATTENTION_MATH_SCALES.fullmatch(name):
        return "skip"
    return None


def merged_target(name: str) -> tuple[str, int | None]:
    """(the model's tensor name, shard index or None) of a checkpoint tensor."""
    for old, new, shard in _STACKED:
        if old in name:
            return name.replace(old, new), shard
    return name, None
