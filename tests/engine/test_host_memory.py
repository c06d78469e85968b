"""What the host's memory allows, said before it runs out: a model too large to load on the
CPU is refused before its weights are written, and an engine process the kernel killed is
reported as such (the process itself logs nothing then)."""

from __future__ import annotations

import signal

import pytest

from pagedllm import LLM
from pagedllm.engine.exceptions import describe_exit
from tests.conftest import engine_in_process

GiB = 1 << 30


def test_weights_larger_than_the_free_memory_are_refused_before_loading(
    tiny_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pagedllm import config
    from pagedllm.worker import model_runner

    written = []
    monkeypatch.setattr(config, "_host_memory", lambda: (64 * GiB, 1000))
    monkeypatch.setattr(model_runner, "load_weights_into", lambda *a: written.append(a))
    with engine_in_process(), pytest.raises(ValueError) as caught:
        LLM(str(tiny_models["llama"]), device="cpu", skip_tokenizer_init=True)
    message = str(caught.value)
    assert message.startswith("Loading the model's weights in float32 on the CPU needs")
    assert "only 9.31e-07 GiB of 64 GiB is available. Pass --dtype bfloat16" in message
    assert not written


def test_a_tiny_model_fits(tiny_models) -> None:
    with engine_in_process():
        llm = LLM(str(tiny_models["llama"]), device="cpu", skip_tokenizer_init=True)
    assert llm.llm_engine.engine_core is not None


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (-signal.SIGKILL, "was killed by SIGKILL, most often the kernel's out-of-memory killer"),
        (-signal.SIGTERM, "was ended by SIGTERM"),
        (1, "exited (code 1)"),
        (None, "exited (code None)"),
    ],
)
def test_an_engine_exit_is_told_in_words(code: int | None, words: str) -> None:
    assert describe_exit(code).startswith(words)


def test_a_containers_memory_limit_bounds_what_is_available(tmp_path, monkeypatch) -> None:
    """/proc/meminfo tells the whole host's memory; a container's cgroup limit is what the
    kernel kills at. Its inactive page cache is not counted as used (given back on demand)."""
    from pagedllm import config

    monkeypatch.setattr(config, "_machine_memory", lambda: (64 * GiB, 48 * GiB))
    monkeypatch.setattr(config, "CGROUP_MEMORY", tmp_path)
    assert config._host_memory() == (64 * GiB, 48 * GiB)  # no cgroup files: the machine's
    (tmp_path / "memory.max").write_text(f"{8 * GiB}\n")
    (tmp_path / "memory.current").write_text(f"{6 * GiB}\n")
    (tmp_path / "memory.stat").write_text(f"anon {4 * GiB}\ninactive_file {GiB}\n")
    assert config._host_memory() == (8 * GiB, 3 * GiB)
    (tmp_path / "memory.max").write_text("max\n")
    assert config._host_memory() == (64 * GiB, 48 * GiB)
