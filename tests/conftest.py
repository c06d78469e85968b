"""Shared fixtures: tiny random-weight checkpoints of each architecture, the bundled
SmolLM2 engine (built once per session, with a small KV budget to start fast), and the
servers that the server and benchmark tests share (tests/server/conftest.py starts them)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.server.conftest import Server

# Keep test runs from writing into the user's cache and from ever reaching a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite compares against float32 references (transformers, exact greedy outputs, KV
# sizes in float32 bytes): its CPU engines keep float32 whatever the CPU's default dtype.
# tests/model/test_cpu_dtype.py checks that default itself.
os.environ.setdefault("PAGEDLLM_CPU_DTYPE", "float32")
# The bundled model registers its tokenizer in the Hugging Face cache on first start: a
# cache of the run's own (servers started by tests inherit it).
os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="pagedllm-test-hf-"))

TINY_VOCAB = 384


@pytest.fixture
def admit_freely() -> Iterator[None]:
    """Schedulers and engines built in the test admit without the forecast
    (``admission_forecast_off``). For the tests of preemption itself, whose small mixes the
    forecast would run without one."""
    with admission_forecast_off():
        yield


@contextlib.contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside, the old value (or none) after."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def engine_in_process() -> contextlib.AbstractContextManager[None]:
    """Engines made inside run their core in the test's own process
    (PAGEDLLM_ENABLE_MULTIPROCESSING=0): for tests that reach into the runner or the
    scheduler. Everything else runs the default, the core in its own process."""
    return env_set("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")


def admission_forecast_off() -> contextlib.AbstractContextManager[None]:
    """Schedulers and engines made inside admit without the forecast
    (``pagedllm/core/admission.py``): while blocks are free, preempting when they run out
    (PAGEDLLM_ADMISSION_FORECAST=0, which engine processes inherit)."""
    return env_set("PAGEDLLM_ADMISSION_FORECAST", "0")


def tiny_config(arch: str):
    """A 2-layer config of each supported family, small enough to run in milliseconds."""
    import transformers

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=0.2,  # large weights: well-separated logits, no greedy near-ties
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        return transformers.LlamaConfig(
            **common,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            rope_theta=50000.0,
        )
    if arch == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
    raise ValueError(arch)


def save_tiny_model(arch: str, directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    model.save_pretrained(directory)
    return directory


def save_char_tokenizer(directory: Path) -> Path:
    """A one-token-per-character tokenizer (printable ASCII; <pad>, <s>, </s> as ids 0-2, as
    the tiny configs expect): enough for grammars to be compiled against a tiny model."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<pad>", "<s>", "</s>", *(c for c in string.printable if c not in "\x0b\x0c\r")]
    assert len(tokens) <= TINY_VOCAB
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {a: save_tiny_model(a, root / a) for a in ("llama", "mistral", "qwen2", "qwen3")}


@pytest.fixture(scope="session")
def smollm():
    """The bundled SmolLM2 behind the offline LLM API (its core in its own process)."""
    from pagedllm import LLM

    return LLM(kv_cache_memory_bytes="96M", max_model_len=2048)


@pytest.fixture(scope="session")
def smollm_in_process():
    """The bundled SmolLM2 with its engine core in the test's process, for tests that drive
    the model runner directly."""
    from pagedllm import LLM

    with engine_in_process():
        return LLM(kv_cache_memory_bytes="96M", max_model_len=2048)


@pytest.fixture(scope="session")
def tiny_chat_model(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama with a one-token-per-character tokenizer and chat template:
    a server on it starts in seconds and generates in milliseconds."""
    import shutil

    directory = tmp_path_factory.mktemp("tiny-chat") / "llama"
    shutil.copytree(tiny_models["llama"], directory)
    return save_char_tokenizer(directory)


# The engine core in its own process whatever the suite runs with (the default; tests about
# that process say so).
SEPARATE = {"PAGEDLLM_ENABLE_MULTIPROCESSING": "1"}


@pytest.fixture(scope="session")
def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """``shared_servers(args, env)``: the server of that command line and environment, started
    on the first call and stopped when the session ends; every module that asks for the same
    one shares it (each start costs ~13 s: two processes import torch). Only for tests that
    send requests and leave nothing behind that another test reads: one that kills or signals
    its server, or counts its metrics from zero, starts its own. Defined here, not in
    tests/server/conftest.py, so that tests/bench shares the same instances."""
    from tests.server.conftest import start_server, stop_server

    running: dict[tuple, Server] = {}

    def shared(args: list[str], env: dict[str, str] | None = None) -> Server:
        key = (tuple(args), tuple(sorted((env or {}).items())))
        if key not in running:
            log = tmp_path_factory.mktemp("server") / "server.log"
            running[key] = start_server(args, log, env=env)
        return running[key]

    yield shared
    for server in running.values():  # all asked first: they shut down side by side
        server.process.terminate()
    for server in running.values():
        stop_server(server)


@pytest.fixture(scope="session")
def tiny_server(tiny_chat_model: Path, shared_servers: Callable[..., Server]) -> Server:
    """``pagedllm serve`` on the tiny model with room for 64 sequences in one step, its engine
    core in its own process: for many streams at once and for the benchmark client."""
    from tests.server.conftest import tiny_server_args

    return shared_servers(tiny_server_args(tiny_chat_model, "--max-num-seqs", "64"), SEPARATE)
