"""One start reports every problem with its arguments, each with its fix (issue 16: a copied
command line needed a restart per refused option)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pagedllm.config import EngineArgs
from pagedllm.startup_problems import StartupProblems


def test_every_problem_at_once(tiny_models: dict[str, Path]) -> None:
    args = EngineArgs(
        model=str(tiny_models["llama"]), cpu_offload_gb=4, tokenizer_mode="slow",
        max_model_len=100_000,  # the tiny config allows 512 positions
        device="cpu" if torch.cuda.is_available() else "cuda",
    )  # fmt: skip
    with pytest.raises(ValueError) as caught:
        args.create_engine_config()
    message = str(caught.value)
    expected = ["cpu_offload_gb=4", "tokenizer_mode='slow'", "100000"]
    if not torch.cuda.is_available():
        expected.append("Use --device cpu")
    assert message.startswith(f"{len(expected)} problems with the arguments:")
    for part in expected:
        assert part in message, (part, message)


def test_one_problem_is_its_own_message(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ValueError) as caught:
        EngineArgs(model=str(tiny_models["llama"]), cpu_offload_gb=4).create_engine_config()
    assert str(caught.value) == "cpu_offload_gb=4 is not supported by pagedllm yet; leave it unset."


def test_collector() -> None:
    problems = StartupProblems()
    assert problems.attempt(lambda: 3) == 3
    assert problems.attempt(lambda: int("x")) is None
    problems.add("second")
    with pytest.raises(ValueError, match=r"^2 problems with the arguments:\n  - invalid literal"):
        problems.raise_if_any()


def test_options_naming_what_pagedllm_does_are_accepted(tiny_models: dict[str, Path]) -> None:
    """vLLM's ``--runner generate`` (``--task generate``, ``--convert none``) is what a
    generation engine does: accepted; pooling and conversions are refused by name."""
    model = str(tiny_models["llama"])
    EngineArgs(model=model, runner="generate", task="generate", convert="none",
               device="cpu").create_engine_config()  # fmt: skip
    with pytest.raises(ValueError, match=r"^runner='pooling' is not supported"):
        EngineArgs(model=model, runner="pooling", device="cpu").create_engine_config()
    with pytest.raises(ValueError, match=r"^convert='embed' is not supported"):
        EngineArgs(model=model, convert="embed", device="cpu").create_engine_config()
