"""Which linear layers hold FP8 weights, and how they compute: ``--quantization`` and a
checkpoint's ``quantization_config`` resolved into one ``QuantConfig``.

Torch-free: config validation reads it at start-up, the model builder asks it, layer by
layer, for the layer's ``Fp8Scheme`` (or None: the layer keeps the model dtype).

Forms read (the ones vLLM reads for FP8, ``config.json``'s ``quantization_config``):

- ``{"quant_method": "fp8", "activation_scheme": "dynamic" | "static",
  "ignored_layers" | "modules_to_not_convert": [...]}``: FP8 weights with a per-tensor
  (or per-row) ``weight_scale``, and with ``static`` a per-tensor ``input_scale``.
  Block-wise scales (``weight_block_size``) are refused.
- ``{"quant_method": "compressed-tensors", "format": "float-quantized",
  "config_groups": {name: {"targets": [...], "weights": {...}, "input_activations":
  {...} | null}}, "ignore": [...], "kv_cache_scheme": {...} | null}``: 8-bit float,
  symmetric, static weights per tensor or per channel; activations dynamic (per token),
  static per tensor, or none (weight-only, W8A16).
- no ``quantization_config`` and ``--quantization fp8``: weights quantized at load, per
  output channel, activations dynamic per token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

QUANTIZATION_METHODS = ("fp8", "compressed-tensors")
ACTIVATIONS = ("dynamic", "static", "none")
# kv_cache_dtype spellings -> the storage format ("auto": the model's dtype).
KV_CACHE_DTYPES = {
    "auto": "auto",
    "fp8": "fp8_e4m3",
    "fp8_e4m3": "fp8_e4m3",
    "fp8_e5m2": "fp8_e5m2",
}
_COMPRESSED_FORMATS = ("float-quantized", "naive-quantized")


@dataclass(frozen=True)
class Fp8Scheme:
    """How one linear layer holds and uses FP8 weights.

    ``serialized``: the checkpoint holds FP8 weights and their scales (else the layer
    quantizes what it loads). ``activations``: "dynamic" (one scale per token, computed
    each step), "static" (one scale from the checkpoint's ``input_scale``) or "none"
    (weight-only: activations stay in the model dtype).
    """

    serialized: bool
    activations: str

    def __post_init__(self) -> None:
        assert self.activations in ACTIVATIONS, self.activations
        assert self.serialized or self.activations == "dynamic", "online FP8 is dynamic"


@dataclass(frozen=True)
class QuantConfig:
    """``groups``: (targets, scheme) pairs, the first whose targets match a layer wins;
    a target is "Linear" (every linear layer), an exact module name, or "re:<regex>"
    (matched at the start of the name). ``ignore``: names or regexes of layers kept in the
    model dtype. ``kv_cache_scheme``: the checkpoint declares an FP8 KV cache with
    per-tensor scales (``kv_cache_dtype="auto"`` then means FP8)."""

    method: str
    groups: tuple[tuple[tuple[str, ...], Fp8Scheme], ...]
    ignore: tuple[str, ...] = ()
    kv_cache_scheme: bool = False

    @classmethod
    def online_fp8(cls) -> QuantConfig:
        return cls("fp8", ((("Linear",), Fp8Scheme(serialized=False, activations="dynamic")),))

    def scheme_for(self, module_names: Sequence[str]) -> Fp8Scheme | None:
        """The scheme of a layer that merges the checkpoint modules ``module_names`` (q, k
        and v; gate and up; or one module): they must all agree."""
        schemes = {self._scheme_of(name) for name in module_names}
        if len(schemes) > 1:
            raise ValueError(
                f"The checkpoint quantizes {', '.join(module_names)} differently; pagedllm "
                "merges them into one layer, so they must share one scheme."
            )
        return schemes.pop()

    def _scheme_of(self, name: str) -> Fp8Scheme | None:
        if any(_matches(target, name) for target in self.ignore):
            return None
        for targets, scheme in self.groups:
            if any(target == "Linear" or _matches(target, name) for target in targets):
                return scheme
        return None


def _matches(target: str, name: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def resolve_quantization(requested: str | None, hf_config: Any) -> QuantConfig | None:
    """The ``QuantConfig`` for ``--quantization requested`` and the checkpoint's own
    ``quantization_config`` (None: no layer is quantized). Raises ValueError naming the
    option or the checkpoint field that cannot be honoured."""
    if requested is not None and requested not in QUANTIZATION_METHODS:
        raise ValueError(
            f"quantization={requested!r} is not supported; pagedllm supports "
            f"{', '.join(QUANTIZATION_METHODS)} (FP8 schemes), or leave it unset."
        )
    text = getattr(hf_config, "text_config", None) or hf_config
    declared = getattr(hf_config, "quantization_config", None)
    if declared is None:
        declared = getattr(text, "quantization_config", None)
    if declared is None:
        if requested == "fp8":
            return QuantConfig.online_fp8()
        if requested is not None:
            raise ValueError(
                f"quantization={requested!r} needs a checkpoint quantized with it; this one "
                "has no quantization_config. Use quantization='fp8' to quantize at load."
            )
        return None
    declared = declared if isinstance(declared, Mapping) else declared.to_dict()
    method = str(declared.get("quant_method", "")).lower()
    if requested is not None and requested != method:
        raise ValueError(
            f"The checkpoint is quantized with {method!r} (its quantization_config), which "
            f"does not match quantization={requested!r}. Leave quantization unset to load "
            "the checkpoint as it is."
        )
    if method == "fp8":
        return _fp8_method(declared)
    if method == "compressed-tensors":
        return _compressed_tensors(declared)
    raise ValueError(
        f"The checkpoint is quantized with {method or 'an unnamed method'!r}, which pagedllm "
        f"does not load; it loads {', '.join(QUANTIZATION_METHODS)} (FP8) checkpoints."
    )


def _fp8_method(config: Mapping[str, Any]) -> QuantConfig:
    if config.get("weight_block_size") is not None:
        raise ValueError(
            "Block-wise FP8 checkpoints (quantization_config weight_block_size="
            f"{config['weight_block_size']}) are not supported; pagedllm loads per-tensor "
            "and per-channel FP8 scales."
        )
    activations = config.get("activation_scheme", "dynamic")
    if activations not in ("dynamic", "static"):
        raise ValueError(
            f"quantization_config activation_scheme={activations!r} is not supported; "
            "expected 'dynamic' or 'static'."
        )
    ignore = config.get("ignored_layers") or config.get("modules_to_not_convert") or []
    scheme = Fp8Scheme(serialized=True, activations=activations)
    return QuantConfig("fp8", ((("Linear",), scheme),), tuple(ignore), _kv_scheme(config))


def _compressed_tensors(config: Mapping[str, Any]) -> QuantConfig:
    fmt = config.get("format")
    if config.get("sparsity_config"):
        raise ValueError("Sparse compressed-tensors checkpoints are not supported.")
    groups = []
    for name, group in (config.get("config_groups") or {}).items():
        group_format = group.get("format") or fmt
        if group_format not in _COMPRESSED_FORMATS:
            raise ValueError(
                f"compressed-tensors format {group_format!r} (group {name!r}) is not "
                f"supported; pagedllm loads {', '.join(_COMPRESSED_FORMATS)} FP8 weights."
            )
        targets = tuple(group.get("targets") or ())
        groups.append((targets, _compressed_scheme(name, group)))
    if not groups:
        raise ValueError("The compressed-tensors quantization_config has no config_groups.")
    ignore = tuple(config.get("ignore") or ())
    return QuantConfig("compressed-tensors", tuple(groups), ignore, _kv_scheme(config))


def _compressed_scheme(name: str, group: Mapping[str, Any]) -> Fp8Scheme:
    weights = group.get("weights") or {}
    if (
        not _is_fp8(weights)
        or weights.get("dynamic")
        or weights.get("strategy")
        not in (
            "tensor",
            "channel",
        )
    ):
        raise ValueError(
            f"compressed-tensors group {name!r} has weights {dict(weights)}; pagedllm loads "
            "8-bit float, symmetric, static weights with 'tensor' or 'channel' scales."
        )
    inputs = group.get("input_activations")
    if inputs is None:
        return Fp8Scheme(serialized=True, activations="none")
    if not _is_fp8(inputs):
        raise ValueError(
            f"compressed-tensors group {name!r} has input_activations {dict(inputs)}; "
            "pagedllm supports 8-bit float symmetric activations, or none."
        )
    if inputs.get("dynamic"):
        return Fp8Scheme(serialized=True, activations="dynamic")
    if inputs.get("strategy") != "tensor":
        raise ValueError(
            f"compressed-tensors group {name!r}: static activation scales must be per "
            f"tensor, got strategy {inputs.get('strategy')!r}."
        )
    return Fp8Scheme(serialized=True, activations="static")


def _is_fp8(args: Mapping[str, Any]) -> bool:
    return (
        args.get("num_bits") == 8
        and args.get("type") == "float"
        and args.get("symmetric", True) is not False
    )


def _kv_scheme(config: Mapping[str, Any]) -> bool:
    scheme = config.get("kv_cache_scheme")
    if not scheme:
        return False
    if not _is_fp8(scheme) or scheme.get("strategy", "tensor") != "tensor" or scheme.get("dynamic"):
        raise ValueError(
            f"kv_cache_scheme {dict(scheme)} is not supported; pagedllm stores the KV cache "
            "in FP8 with one static scale per layer for K and one for V."
        )
    return True


def resolve_kv_cache_dtype(kv_cache_dtype: str, quant: QuantConfig | None, dtype: str) -> str:
    """The KV cache's storage: "auto" (the model's ``dtype``), "fp8_e4m3" or "fp8_e5m2". A
    checkpoint that declares an FP8 KV cache gets one when the user leaves it "auto"; naming
    the model's dtype keeps the cache unquantized."""
    name = str(kv_cache_dtype).lower()
    if name in ("float16", "bfloat16"):
        if name != dtype:
            raise ValueError(
                f"kv_cache_dtype={kv_cache_dtype!r} differs from the model's dtype {dtype!r}; "
                "pagedllm keeps the KV cache in the model's dtype or in FP8."
            )
        return "auto"
    value = KV_CACHE_DTYPES.get(name)
    if value is None:
        raise ValueError(
            f"kv_cache_dtype={kv_cache_dtype!r} is not supported; choose one of "
            f"{', '.join(KV_CACHE_DTYPES)}, or the model's dtype."
        )
    if value == "auto" and quant is not None and quant.kv_cache_scheme:
        return "fp8_e4m3"
    return value
