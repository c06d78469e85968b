"""GPU tests: skipped without CUDA; run on the GPU machine."""

from __future__ import annotations

import os

import pytest
import torch

collect_ignore_glob: list[str] = []
if not torch.cuda.is_available():
    collect_ignore_glob = ["test_*.py"]
else:
    # GPU tests reach into the engine (logits, KV plans, preemption counts): its core runs in
    # the test process, except in tests that build one in its own process on purpose.
    os.environ.setdefault("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")


def gpu_config(arch: str):
    """Small, but with the head dims the kernels serve (64 and 128) and real GQA."""
    import transformers

    common = dict(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    if arch == "llama":
        return transformers.LlamaConfig(
            **common, tie_word_embeddings=False, rope_theta=50000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
        )  # fmt: skip
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        return transformers.Qwen3Config(**{**common, "num_attention_heads": 8}, head_dim=128,
                                        tie_word_embeddings=True)  # fmt: skip
    raise ValueError(arch)


@pytest.fixture(scope="session")
def gpu_models(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    paths = {}
    for arch in ("llama", "qwen2", "qwen3"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(gpu_config(arch), dtype=torch.float32)
        path = tmp_path_factory.mktemp("gpu") / arch
        model.save_pretrained(path)
        paths[arch] = path
    return paths
