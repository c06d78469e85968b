"""The ``pagedllm`` logger: one handler, vLLM-like line format, one level for the package
(``PAGEDLLM_LOGGING_LEVEL``, or the server's ``--log-level``)."""

from __future__ import annotations

import logging
import os
import sys

from pagedllm import envs

_FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
_DATE_FORMAT = "%m-%d %H:%M:%S"
_ROOT = "pagedllm"
# uvicorn's names (its "trace" is finer than DEBUG: the package logs nothing finer).
_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE"}
_configured = False


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    root = logging.getLogger(_ROOT)
    if not envs.configure_logging():
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(_level_number(envs.logging_level(), "PAGEDLLM_LOGGING_LEVEL"))
    root.propagate = False


def init_logger(name: str) -> logging.Logger:
    """Return the logger for a module of this package (``init_logger(__name__)``)."""
    _configure_root()
    if name == "__main__":
        # A module run with ``python -m`` is named __main__, outside the package's logger
        # (its lines would be dropped): use the module's real name.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.name if spec is not None else _ROOT
    return logging.getLogger(name)


def set_log_level(level: str) -> None:
    """Log the package at ``level`` (any case: ``DEBUG``, ``debug``), here and in the
    processes started after this (the engine core reads PAGEDLLM_LOGGING_LEVEL)."""
    number = _level_number(level, "--log-level")
    os.environ["PAGEDLLM_LOGGING_LEVEL"] = level.upper()
    _configure_root()
    if envs.configure_logging():
        logging.getLogger(_ROOT).setLevel(number)


def _level_number(level: str, source: str) -> int:
    name = level.strip().upper()
    if name not in _LEVELS:
        raise ValueError(
            f"{source}={level!r} is not a log level; use one of "
            f"{', '.join(sorted(n.lower() for n in _LEVELS))} (any case)."
        )
    return logging.DEBUG if name == "TRACE" else getattr(logging, name)
