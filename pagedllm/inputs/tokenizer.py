"""Tokenizer loading, from the model's own files (never from the network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pagedllm.config import ModelConfig
from pagedllm.model_files import resolve_model

AnyTokenizer = Any  # transformers.PreTrainedTokenizerBase


def load_tokenizer(model_config: ModelConfig) -> AnyTokenizer | None:
    """The model's tokenizer, or None with ``skip_tokenizer_init``."""
    if model_config.skip_tokenizer_init:
        return None
    from transformers import AutoTokenizer

    source = _tokenizer_dir(model_config)
    try:
        return AutoTokenizer.from_pretrained(
            str(source), trust_remote_code=model_config.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"Could not load a tokenizer from {source}: {exc}. Point `tokenizer` at a "
            "directory with tokenizer files, or pass skip_tokenizer_init=True and give "
            'prompts as token ids ({"prompt_token_ids": [...]}).'
        ) from exc


def _tokenizer_dir(model_config: ModelConfig) -> Path:
    if model_config.tokenizer is None:
        files = model_config.files
        if not files.has_tokenizer():
            raise ValueError(
                f"{files.config_dir} has no tokenizer files. Pass tokenizer=<dir or repo id>, "
                "or skip_tokenizer_init=True and give prompts as token ids."
            )
        return files.config_dir
    local = Path(model_config.tokenizer).expanduser()
    if local.is_dir():  # tokenizer files alone, no model config needed beside them
        return local
    return resolve_model(model_config.tokenizer).config_dir
