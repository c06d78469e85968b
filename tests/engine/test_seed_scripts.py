"""The users' own scripts (../shared/seeds/003, sections 9.1.1 and 9.2.1), run unchanged but
for `vllm` -> `pagedllm` in the import and the model path, against Hugging Face-format
directories (safetensors + tokenizer), as those users keep their models: SmolLM2 itself, and
for the multi-turn script (2 x 512 sampled tokens, minutes of CPU with the real weights) a
2-layer random-weight model with SmolLM2's config keys, tokenizer and chat template."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.engine.conftest import run_seed


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


def test_seed_offline_inference_script(smollm_dir, tmp_path):
    stdout = run_seed("vllm_swift.py", smollm_dir, tmp_path)
    assert stdout.count("输入：") == 2 and stdout.count("生成：") == 2
    assert "肚子疼" in stdout


def test_seed_multi_turn_script(tiny_smollm_dir, tmp_path):
    # The engine core in the script's process (the other seed scripts keep their own core
    # process, the default): the script reads only text back, and a process costs ~5 s.
    in_process = {"PAGEDLLM_ENABLE_MULTIPROCESSING": "0"}
    stdout = run_seed("vllm_infer.py", tiny_smollm_dir, tmp_path, env=in_process)
    assert stdout.count("query: ") == 2 and stdout.count("response: ") == 2
