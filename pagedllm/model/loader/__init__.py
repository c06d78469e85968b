"""Weight loaders: each yields (Hugging Face tensor name, tensor) pairs for
``CausalLM.load_weights``, or fills parameters directly (dummy)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pagedllm.config import ModelConfig
from pagedllm.model.decoder import CausalLM
from pagedllm.model.sharding import ShardPlan


def load_weights_into(
    model: CausalLM, model_config: ModelConfig, gguf_blocks: bool = False
) -> None:
    """Fill ``model``'s parameters from the source ``model_config`` names (one rank's share
    of them when ``model.plan`` says so; dummy weights fill whatever shapes the rank has).
    ``gguf_blocks``: the model was built to take a GGUF file's blocks as stored."""
    if model_config.load_format == "dummy":
        from pagedllm.model.loader.dummy_weights import fill_dummy_weights

        fill_dummy_weights(model, model_config.seed)
        model.finish_loading()
        return
    model.load_weights(_iter_weights(model_config, model.plan, gguf_blocks))


def _iter_weights(
    model_config: ModelConfig, plan: ShardPlan | None, gguf_blocks: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each rank's tensors (``plan``: only its slices, only its stage's layers)."""
    files = model_config.files
    assert files.gguf_file is not None or not gguf_blocks, "GGUF blocks need a GGUF file"
    if files.gguf_file is not None:
        from pagedllm.model.loader.gguf_weights import iter_gguf_weights

        return iter_gguf_weights(  # type: ignore[return-value]
            files.gguf_file, model_config.text_config, files.config_dir, plan, gguf_blocks
        )
    if not files.safetensors:
        raise ValueError(
            f"No *.safetensors weights found in {files.config_dir}. pagedllm loads "
            "safetensors and GGUF checkpoints; use load_format='dummy' for random weights."
        )
    from pagedllm.model.loader.safetensors_weights import iter_safetensors_weights

    return iter_safetensors_weights(files.safetensors, plan)
