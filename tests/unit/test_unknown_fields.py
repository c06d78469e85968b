"""Unknown request fields: logged once per name, with bounds on what a client can make
the server remember or write."""

from __future__ import annotations

import logging

import pytest

from pagedllm.entrypoints.openai import unknown_fields
from pagedllm.entrypoints.openai.protocol import CompletionRequest, StreamOptions


@pytest.fixture(autouse=True)
def fresh():
    unknown_fields.forget_unknown_fields()
    yield
    unknown_fields.forget_unknown_fields()


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_unknown_fields_are_dropped_and_logged_once(caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            request = CompletionRequest.model_validate(
                {"model": "m", "prompt": "p", "verbosity": "low", "max_tokens": 3}
            )
    assert request.max_tokens == 3 and "verbosity" not in request.model_dump()
    assert warnings(caplog) == [
        "The request field 'verbosity' of CompletionRequest is not known to this server: "
        "ignored (logged once)."
    ]


def test_known_fields_keep_their_strict_types():
    with pytest.raises(ValueError, match="max_tokens"):
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "max_tokens": "3"})
    assert StreamOptions.model_validate({"include_usage": True}).include_usage


def test_names_are_cut_escaped_and_bounded(caplog, monkeypatch):
    monkeypatch.setattr(unknown_fields, "MAX_NAMES", 3)
    hostile = "x\n[ERROR] forged line" + "y" * 500
    with caplog.at_level(logging.WARNING):
        CompletionRequest.model_validate({"model": "m", "prompt": "p", hostile: 1})
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "a": 1, "b": 1, "c": 1})
    lines = warnings(caplog)
    assert "\n" not in lines[0] and "\\n" in lines[0] and len(lines[0]) < 200
    assert lines[-1] == (
        "3 unknown request field names seen; further ones are ignored without a log line."
    )
    assert len(lines) == 4 and len(unknown_fields._seen) == 3
