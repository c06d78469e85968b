"""The package logger's level: any case, a clear error for a wrong name, and a module run
with ``python -m`` logs under its real name (inside the package's logger)."""

from __future__ import annotations

import logging
import os

import pytest

from pagedllm.logger import init_logger, set_log_level


def test_any_case_sets_the_package_level_and_the_child_processes_level(monkeypatch):
    monkeypatch.setenv("PAGEDLLM_LOGGING_LEVEL", "INFO")
    root = logging.getLogger("pagedllm")
    monkeypatch.setattr(root, "level", root.level)  # restored after the test
    set_log_level("DEBUG")
    assert init_logger("pagedllm.engine.core").isEnabledFor(logging.DEBUG)
    assert os.environ["PAGEDLLM_LOGGING_LEVEL"] == "DEBUG"
    set_log_level("warning")
    assert not init_logger("pagedllm.engine.core").isEnabledFor(logging.INFO)
    set_log_level("trace")  # uvicorn's finest level: the package's finest is DEBUG
    assert root.level == logging.DEBUG


def test_a_wrong_level_names_the_choices():
    with pytest.raises(ValueError, match=r"'loud' is not a log level; use one of .*debug"):
        set_log_level("loud")


def test_main_module_logs_under_its_real_name(monkeypatch):
    import sys
    import types

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="pagedllm.entrypoints.openai.api_server")  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert init_logger("__main__").name == "pagedllm.entrypoints.openai.api_server"
