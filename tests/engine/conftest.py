"""Fixtures of the engine tests: the users' seed scripts and the models they run on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "seed_scripts"


@pytest.fixture(scope="session")
def tiny_smollm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's directory shrunk to 2 layers of width 64 with random weights (its 49152-token
    tokenizer and template kept): the same loading, templating and sampling path, each
    decode step in milliseconds."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pagedllm.model_files import resolve_model

    files = resolve_model(None)
    target = tmp_path_factory.mktemp("SmolLM2-tiny")
    for path in files.config_dir.iterdir():
        if path.name != "gguf_tensors.json":
            shutil.copy(path, target / path.name)
    config = AutoConfig.from_pretrained(target)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16))  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(target)
    return target


def run_seed(name: str, model_dir: Path, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """The script's stdout, run with ``model_dir`` for its model and ``env`` added to the
    environment; it must exit 0."""
    script = tmp_path / name
    script.write_text((SCRIPTS / name).read_text().replace("MODEL_PATH", str(model_dir)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=900,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
