"""Model sources: sharded safetensors, the offline Hugging Face cache, GGUF files and
directories, dummy weights, and the cached GGUF conversion."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from pagedllm import LLM, SamplingParams
from pagedllm.model_files import bundled_gguf_path, resolve_model
from tests.conftest import engine_in_process, tiny_config

PROMPT = {"prompt_token_ids": [4, 9, 16, 25, 36, 49]}
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, detokenize=False)


def generate(model: str, **kwargs) -> list[int]:
    """Greedy tokens of an engine on ``model``, its core in this process: the files are read
    the same there as in a process of its own, and starting one cost ~5 s for each of the
    module's nine engines."""
    with engine_in_process():
        llm = LLM(
            model=model,
            skip_tokenizer_init=True,
            kv_cache_memory_bytes="32M",
            max_model_len=256,
            **kwargs,
        )
    return llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def test_sharded_safetensors_match_single_file(tiny_models, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    assert generate(str(tmp_path)) == generate(str(tiny_models["qwen3"]))


def test_repo_id_from_the_local_hf_cache(tiny_models, tmp_path, monkeypatch):
    # The hub cache layout: models--org--name/{refs/main, snapshots/<revision>/...}
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_models["llama"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("tiny-org/tiny-llama").config_dir == snapshot
    assert generate("tiny-org/tiny-llama") == generate(str(tiny_models["llama"]))


def test_dummy_weights_need_only_a_config(tmp_path):
    (tmp_path / "config.json").write_text(tiny_config("qwen2").to_json_string())
    tokens = generate(str(tmp_path), load_format="dummy")
    assert len(tokens) == 12
    assert generate(str(tmp_path), load_format="dummy") == tokens  # seeded: reproducible
    with pytest.raises(ValueError, match="safetensors"):
        generate(str(tmp_path))


def test_gguf_file_directory_and_repo_id_agree(tmp_path):
    """The four ways to name the bundled model resolve to the same weights and converted
    config, and a directory holding its GGUF generates what the repo id does (one engine
    per form would add ~12 s each and test the same files)."""
    gguf = bundled_gguf_path()
    (tmp_path / gguf.name).symlink_to(gguf)
    by_id = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    for form in (str(tmp_path / gguf.name), str(tmp_path), None):
        files = resolve_model(form)
        assert (files.gguf_file, files.config_dir) == (by_id.gguf_file, by_id.config_dir), form
    assert generate(str(tmp_path)) == generate("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_gguf_conversion_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEDLLM_CACHE_ROOT", str(tmp_path))
    first = resolve_model(None)
    assert (first.config_dir / "tokenizer.json").exists()
    config = json.loads((first.config_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    stamp = os.stat(first.config_dir / "config.json").st_mtime_ns
    second = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert second.config_dir == first.config_dir
    assert os.stat(second.config_dir / "config.json").st_mtime_ns == stamp


def test_directory_with_several_ggufs_asks_which(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).symlink_to(bundled_gguf_path())
    with pytest.raises(ValueError, match="several GGUF files"):
        resolve_model(str(tmp_path))


def test_gguf_index_written_under_a_temporary_name_of_its_own(tmp_path):
    """Ranks loading one GGUF at once each write its tensor index: one writer's temporary
    file (here a directory standing in the way at a shared name) never meets another's,
    and only the whole index is left."""
    from pagedllm.model.loader.gguf_weights import _INDEX_FILE, _load_index

    index_path = tmp_path / _INDEX_FILE
    (tmp_path / "gguf_tensors.tmp").mkdir()  # the name every writer used to share
    index = _load_index(bundled_gguf_path(), index_path)
    assert json.loads(index_path.read_text()) == index
    assert sorted(p.name for p in tmp_path.iterdir()) == [_INDEX_FILE, "gguf_tensors.tmp"]
