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


def test_a_gguf_models_stored_blocks_are_counted_before_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bundled GGUF on the CPU computes on its blocks as stored: its layers are empty
    placeholders until loaded, so the check sizes the file's tensors instead (~98 MB here,
    where the placeholders and norms come to well under 1 MB)."""
    from pagedllm import config
    from pagedllm.worker import model_runner

    written = []
    monkeypatch.setattr(config, "_host_memory", lambda: (64 * GiB, 20 << 20))
    monkeypatch.setattr(model_runner, "load_weights_into", lambda *a: written.append(a))
    with engine_in_process(), pytest.raises(ValueError) as caught:
        LLM(device="cpu", max_model_len=512)
    assert str(caught.value).startswith("Loading the model's weights in ")
    assert "only 0.0195 GiB of 64 GiB is available" in str(caught.value)
    assert not written


def test_gguf_tensors_are_sized_as_they_will_be_held(tmp_path) -> None:
    """Stored types (2-D) at the file's bytes; F16, F32 and 1-D tensors at the model's
    element size (an F16 file in a float32 model doubles)."""
    import json

    from gguf import GGMLQuantizationType as T

    from pagedllm.model.loader.gguf_weights import held_bytes

    tensors = [
        {"name": "a", "type": int(T.Q4_1), "shape": [64, 256], "offset": 0, "n_bytes": 9216},
        {"name": "b", "type": int(T.F16), "shape": [64, 256], "offset": 0, "n_bytes": 32768},
        {"name": "c", "type": int(T.F32), "shape": [256], "offset": 0, "n_bytes": 1024},
    ]
    (tmp_path / "gguf_tensors.json").write_text(json.dumps({"arch": "llama", "tensors": tensors}))
    assert held_bytes(tmp_path / "unread.gguf", tmp_path, 4) == 9216 + 64 * 256 * 4 + 256 * 4
    assert held_bytes(tmp_path / "unread.gguf", tmp_path, 2) == 9216 + 64 * 256 * 2 + 256 * 2
