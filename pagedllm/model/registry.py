"""Supported architectures (``config.json`` ``architectures``) and the decoder family each
maps to. Kept free of torch so config validation can use it cheaply."""

from __future__ import annotations

from typing import Any

_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
SUPPORTED_ARCHITECTURES = tuple(_FAMILIES)
# For configs that name no architecture (hand-written ones, some conversions).
_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def check_architecture(architectures: list[str], model_type: str | None = None) -> str:
    """The first supported architecture named by the config (or implied by its model_type
    when it names none), or a ValueError listing ours."""
    if not architectures and model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    for arch in architectures:
        if arch in _FAMILIES:
            return arch
    named = ", ".join(architectures) if architectures else "none"
    raise ValueError(
        f"Model architecture(s) {named} not supported. Supported architectures: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}."
    )


def family(architecture: str) -> str:
    return _FAMILIES[architecture]


def build_model(
    architecture: str,
    hf_config: Any,
    dtype: Any,
    device: Any,
    quant: Any = None,
    parallel: Any = None,
    gguf_blocks: bool = False,
) -> Any:
    """Instantiate the (unloaded) model on ``device`` (a ``torch.device``), with that
    device's operations (``DeviceOps``); ``quant`` (a ``pagedllm.quantization.QuantConfig``)
    makes the layers it names FP8; ``parallel`` (a
    ``pagedllm.distributed.parallel_state.ModelParallel``) builds one rank's share;
    ``gguf_blocks``: layers that compute on a GGUF file's blocks as stored (the CPU, one
    rank, ``pagedllm.model.layers.gguf_blocks``)."""
    import torch

    from pagedllm.model.decoder import CausalLM, DecoderSpec
    from pagedllm.model.layers.device_ops import device_ops

    text_config = getattr(hf_config, "text_config", None) or hf_config
    spec = DecoderSpec.from_config(text_config, family(architecture))
    ops = device_ops(device)
    with torch.device(device):
        if gguf_blocks:
            from pagedllm.model.layers.gguf_blocks import STORED_VOCAB, gguf_linears

            one_rank = parallel is None or parallel.world_size == 1
            assert quant is None and one_rank, "GGUF blocks: unquantized, one rank"
            return CausalLM(spec, dtype, ops, gguf_linears(dtype, ops), parallel, STORED_VOCAB)
        if quant is None:
            return CausalLM(spec, dtype, ops, parallel=parallel)
        from pagedllm.model.layers.fp8_linear import fp8_linears

        return CausalLM(spec, dtype, ops, fp8_linears(dtype, quant, ops), parallel)
