"""Command-line flags generated from dataclasses (``EngineArgs``, the server's vLLM options):
one flag per field, vLLM's names, spelled with dashes or underscores (``--max-model-len``
and ``--max_model_len``), the field's docstring its help."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import textwrap
import types
import typing
from collections.abc import Collection
from typing import Any

from pagedllm.config import EngineArgs
from pagedllm.engine.vllm_options import ANY

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
    "speculative_config": "-sc",
    "compilation_config": "-cc",
    "pipeline_parallel_size": "-pp",
    "data_parallel_size": "-dp",
}


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal right after it), the one source
    of the flags' help text; fields of base dataclasses included (``EngineArgs`` inherits
    vLLM's other options from ``VllmEngineOptions``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


@functools.cache
def _own_field_docs(cls: type) -> dict[str, str]:
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
    add_dataclass_flags(parser.add_argument_group("engine"), EngineArgs, skip)


def add_dataclass_flags(group: Any, cls: type, skip: Collection[str] = frozenset()) -> None:
    """One flag per field of the dataclass ``cls``, typed from its annotation, its help the
    field's docstring (plus the values accepted, for options known only by name)."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        short = _SHORT_FLAGS.get(f.name) or f.metadata.get("short")
        if short:
            flags.append(short)
        text = (docs.get(f.name, "") + _accepted_note(f)).replace("%", "%%")  # argparse's %
        group.add_argument(*flags, dest=f.name, default=None, help=text, **_parse_kwargs(f))


def _parse_kwargs(f: dataclasses.Field) -> dict[str, Any]:
    """How argparse reads a field's value: bools as --flag / --no-flag, dicts as JSON (or
    dotted --flag.key value pairs, see vllm_argv), lists as several values."""
    annotation = str(f.type)
    kind = _base_type(f.type)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if f.name in _JSON_FIELDS or annotation.startswith("dict") or "| dict" in annotation:
        return {"type": json.loads}
    if "list[" in annotation:
        item = annotation.split("list[", 1)[1].split("]", 1)[0]
        return {"nargs": "+", "type": _base_type(item)}
    return {"type": kind}


def _accepted_note(f: dataclasses.Field) -> str:
    accepts = f.metadata.get("accepts")
    if accepts is None or accepts == ANY:
        return ""
    shown = " or ".join(repr(value) for value in accepts)
    return f" Accepted as {shown} only (vLLM's default); other values are refused."


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
