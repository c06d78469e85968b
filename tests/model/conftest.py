"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from tests.conftest import engine_in_process
from tests.model.teacher_forcing import Scores, score


@pytest.fixture(scope="session")
def float32_scores() -> Scores:
    """The bundled SmolLM2's teacher-forced scores in float32: the reference of both the FP8
    quality and the CPU dtype tests (one engine and one 512-token pass for the two)."""
    with engine_in_process():
        return score(dtype="float32")
