"""The users' own scripts (../shared/seeds/003, sections 9.1.1 and 9.2.1), run unchanged but
for `vllm` -> `pagedllm` in the import and the model path, against Hugging Face-format
directories (safetensors + tokenizer), as those users keep their models: SmolLM2 itself, and
for the multi-turn script (2 x 512 sampled tokens, minutes of CPU with the real weights) a
2-layer random-weight model with SmolLM2's config keys, tokenizer and chat template."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "seed_scripts"


@pytest.fixture(scope="session")
def smollm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from pagedllm.model.loader.gguf_weights import iter_gguf_weights
    from pagedllm.model_files import resolve_model

    files = resolve_model(None)
    target = tmp_path_factory.mktemp("SmolLM2-135M-Instruct")
    for path in files.config_dir.iterdir():
        if path.name != "gguf_tensors.json":  # config, generation config, tokenizer, template
            shutil.copy(path, target / path.name)
    config = AutoConfig.from_pretrained(target)
    tensors = dict(iter_gguf_weights(files.gguf_file, config, files.config_dir))
    save_file(tensors, target / "model.safetensors")
    return target


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


def run_seed(name: str, model_dir: Path, tmp_path: Path) -> str:
    script = tmp_path / name
    script.write_text((SCRIPTS / name).read_text().replace("MODEL_PATH", str(model_dir)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_seed_offline_inference_script(smollm_dir, tmp_path):
    stdout = run_seed("vllm_swift.py", smollm_dir, tmp_path)
    assert stdout.count("输入：") == 2 and stdout.count("生成：") == 2
    assert "肚子疼" in stdout


def test_seed_multi_turn_script(tiny_smollm_dir, tmp_path):
    stdout = run_seed("vllm_infer.py", tiny_smollm_dir, tmp_path)
    assert stdout.count("query: ") == 2 and stdout.count("response: ") == 2
