"""The ``pagedllm`` logger: one handler, vLLM-like line format."""

from __future__ import annotations

import logging
import sys

from pagedllm import envs

_FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
_DATE_FORMAT = "%m-%d %H:%M:%S"
_configured = False


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    root = logging.getLogger("pagedllm")
    if not envs.configure_logging():
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(envs.logging_level())
    root.propagate = False


def init_logger(name: str) -> logging.Logger:
    """Return the logger for a module of this package (``init_logger(__name__)``)."""
    _configure_root()
    return logging.getLogger(name)
