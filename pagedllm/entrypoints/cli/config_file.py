"""``--config FILE.yaml``: flags from a YAML file, as ``vllm serve --config`` reads them.

Each top-level key is a flag (``tensor-parallel-size: 1`` or ``max_model_len: 4096``):
``true`` gives the bare flag, ``false`` and empty lists give nothing, a list gives the flag
followed by its items, a mapping gives its JSON (for the JSON-valued flags), anything else
its string. The file's flags go right after the subcommand (and the model, when given on
the command line), so a flag typed on the command line wins over the same flag in the
file. The file is the operator's, named on the command line; no request reaches it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def expand_config_file(argv: list[str]) -> list[str]:
    """``argv`` with ``--config FILE`` (or ``--config=FILE``) replaced by the file's flags."""
    found = [i for i, arg in enumerate(argv) if arg == "--config" or arg.startswith("--config=")]
    if not found:
        return argv
    if len(found) > 1:
        raise ValueError("--config is given more than once; pass one YAML file.")
    index = found[0]
    if argv[index] == "--config":
        if index + 1 == len(argv):
            raise ValueError("--config needs a YAML file.")
        path, rest = argv[index + 1], argv[index + 2 :]
    else:
        path, rest = argv[index].split("=", 1)[1], argv[index + 1 :]
    flags = config_flags(path)
    before = argv[:index]
    head = _head_length(before)
    return before[:head] + flags + before[head:] + rest


def config_flags(path: str) -> list[str]:
    """The flags a YAML config file stands for (ValueError naming what is wrong)."""
    import yaml

    if Path(path).suffix not in (".yaml", ".yml"):
        raise ValueError(f"--config takes a .yaml or .yml file, got {path!r}.")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"Cannot read the --config file {path!r}: {exc.strerror}.") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"The --config file {path!r} is not valid YAML: {exc}") from None
    if config is None:
        return []
    if not isinstance(config, dict):
        raise ValueError(f"The --config file {path!r} must map flag names to values.")
    flags: list[str] = []
    for key, value in config.items():
        flags += _flag(str(key), value)
    return flags


def _flag(key: str, value: Any) -> list[str]:
    name = f"--{key}"
    if isinstance(value, bool):
        return [name] if value else []
    if isinstance(value, list):
        return [name, *(str(item) for item in value)] if value else []
    if isinstance(value, dict):
        return [name, json.dumps(value)]
    return [name, str(value)]


def _head_length(argv: list[str]) -> int:
    """How many leading arguments stay before the file's flags: the subcommand, and the
    positional model after ``serve``."""
    if not argv or argv[0].startswith("-"):
        return 0
    if argv[0] == "serve" and len(argv) > 1 and not argv[1].startswith("-"):
        return 2
    return 1
