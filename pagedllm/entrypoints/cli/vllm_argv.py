"""The command-line spellings vLLM's FlexibleArgumentParser reads, rewritten into plain flags
before argparse sees them (after ``--config FILE`` is expanded):

- ``-O3``, ``-O=3`` and ``-O 3``: ``--optimization-level 3``;
- dotted JSON keys: ``--compilation-config.cudagraph_mode NONE`` (or ``=NONE``, or the
  short ``-cc.cudagraph_mode``) sets one key of a JSON-valued flag, nested keys by more
  dots; the keys given for one flag are merged into one JSON object. ``KEY+ a,b`` appends
  list items. A value is read as JSON, then as a size such as ``8k``, else kept as text;
- flag names with underscores: ``--max_model_len`` as ``--max-model-len``.
"""

from __future__ import annotations

import json
import re
from typing import Any

_LEVELS = ("0", "1", "2", "3")
# A dotted flag: --name.key or -short.key (not a negative number such as -0.5).
_DOTTED = re.compile(r"(-{1,2}[A-Za-z][\w-]*)\.([^=]+)")


def normalize_vllm_argv(argv: list[str]) -> list[str]:
    """``argv`` with vLLM's -O and dotted JSON spellings rewritten (ValueError if a dotted
    flag has no value)."""
    plain: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # everything after is positional
            plain += argv[i:]
            break
        consumed, dotted = _dotted(argv, i)
        if dotted is not None:
            name, keys, value = dotted
            _merge(merged.setdefault(name, {}), keys, value)
            i += consumed
            continue
        if arg.startswith("-O") and arg != "-O":
            plain += ["--optimization-level", arg[3:] if arg[2:3] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(argv) and argv[i + 1] in _LEVELS:
            plain.append("--optimization-level")
        else:
            plain.append(_dashed(arg))
        i += 1
    for name, value in merged.items():
        plain += [name, json.dumps(value)]
    return plain


def _dashed(arg: str) -> str:
    """--max_model_len (or --max_model_len=8k) as --max-model-len; values untouched."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("_", "-") + sep + value


def _dotted(argv: list[str], i: int) -> tuple[int, tuple[str, list[str], Any] | None]:
    """(arguments consumed, (flag, keys, value)) when argv[i] is a dotted flag."""
    arg = argv[i]
    key, has_value, text = arg.partition("=")
    match = _DOTTED.fullmatch(key)
    if match is None:
        return 1, None
    if not has_value:
        if i + 1 == len(argv):
            raise ValueError(f"{arg} needs a value.")
        text = argv[i + 1]
    name, path = match.group(1), match.group(2)
    if name.startswith("--"):
        name = name.replace("_", "-")
    value: Any = _value(text)
    if path.endswith("+"):  # KEY+ a,b: list items to append
        path, value = path[:-1], [_value(item) for item in text.split(",")]
    return (1 if has_value else 2), (name, path.split("."), value)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    from pagedllm.config import parse_token_count

    try:
        return parse_token_count(text)  # '8k', '2M', as vLLM reads dotted values
    except ValueError:
        return text


def _merge(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        inner = target.get(key)
        if not isinstance(inner, dict):
            inner = target[key] = {}
        target = inner
    last = keys[-1]
    if isinstance(value, list) and isinstance(target.get(last), list):
        target[last] = target[last] + value  # repeated KEY+ items accumulate
    else:
        target[last] = value
