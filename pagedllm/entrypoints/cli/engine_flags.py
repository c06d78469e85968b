"""Command-line flags generated from ``EngineArgs``: one flag per field, vLLM's names,
spelled with dashes or underscores (``--max-model-len`` and ``--max_model_len``)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import textwrap
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


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal right after it), the one source
    of the engine flags' help text."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for field, after in itertools.pairwise(body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def add_engine_flags(parser: argparse.ArgumentParser, skip: Collection[str] = frozenset()) -> None:
    group = parser.add_argument_group("engine")
    docs = field_docs(EngineArgs)
    for f in dataclasses.fields(EngineArgs):
        if f.name in skip:
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        if f.name in _SHORT_FLAGS:
            flags.append(_SHORT_FLAGS[f.name])
        kind = _base_type(f.type)
        text = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            group.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                help=text,
            )  # fmt: skip
        elif f.name in _JSON_FIELDS:
            group.add_argument(*flags, dest=f.name, type=json.loads, default=None, help=text)
        elif f.name == "served_model_name":
            group.add_argument(*flags, dest=f.name, nargs="+", default=None, help=text)
        else:
            group.add_argument(*flags, dest=f.name, type=kind, default=None, help=text)


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
