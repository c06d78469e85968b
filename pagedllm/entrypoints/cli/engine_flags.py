"""Command-line flags generated from ``EngineArgs``: one flag per field, vLLM's names,
spelled with dashes or underscores (``--max-model-len`` and ``--max_model_len``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Collection
from typing import Any

from pagedllm.config import EngineArgs

# Fields whose values are structured (dicts) on the command line: JSON strings.
_JSON_FIELDS = {
    "speculative_config",
    "hf_overrides",
    "rope_scaling",
    "compilation_config",
    "kv_transfer_config",
    "limit_mm_per_prompt",
    "mm_processor_kwargs",
    "override_generation_config",
    "pooler_config",
    "override_pooler_config",
    "structured_outputs_config",
}

# vLLM's short spellings.
_SHORT_FLAGS = {
    "quantization": "-q",
    "tensor_parallel_size": "-tp",
    "pipeline_parallel_size": "-pp",
    "data_parallel_size": "-dp",
}


def add_engine_flags(parser: argparse.ArgumentParser, skip: Collection[str] = frozenset()) -> None:
    group = parser.add_argument_group("engine")
    for f in dataclasses.fields(EngineArgs):
        if f.name in skip:
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        if f.name in _SHORT_FLAGS:
            flags.append(_SHORT_FLAGS[f.name])
        kind = _base_type(f.type)
        if kind is bool:
            group.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None
            )
        elif f.name in _JSON_FIELDS:
            group.add_argument(*flags, dest=f.name, type=json.loads, default=None)
        elif f.name == "served_model_name":
            group.add_argument(*flags, dest=f.name, nargs="+", default=None)
        else:
            group.add_argument(*flags, dest=f.name, type=kind, default=None)


def engine_args_from(namespace: argparse.Namespace) -> EngineArgs:
    """EngineArgs from parsed flags; flags not given keep EngineArgs' defaults."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(EngineArgs):
        value = getattr(namespace, f.name, None)
        if value is not None:
            values[f.name] = value
    return EngineArgs(**values)


def _base_type(annotation: Any) -> Any:
    """The scalar type a flag parses to, from a (string) annotation like 'int | None'."""
    if isinstance(annotation, str):
        names = [part.strip() for part in annotation.split("|")]
        if "str" in names:  # e.g. sizes such as '8G' or '32k', parsed by EngineArgs
            return str
        for name in names:
            if name in ("bool", "int", "float"):
                return {"bool": bool, "int": int, "float": float}[name]
        return str
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if args else str
    return annotation if annotation in (bool, int, float) else str
