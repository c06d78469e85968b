"""Which tensor/pipeline parallel sizes a model can be split into, checked before any process
starts. Torch-free: ``EngineArgs.create_engine_config`` calls it.

The rules are vLLM 0.26's (``ModelConfig.verify_with_parallel_config`` and the QKV layer):
attention heads divide evenly over the TP ranks; KV heads too, or, when there are fewer KV
heads than ranks, each KV head is replicated on ``tp // num_kv_heads`` ranks (so that number
must be whole). vLLM asserts on the KV-head and MLP cases; here they are sentences, naming
the option (``tensor_parallel_size``) where vLLM says "tensor parallel size".
"""

from __future__ import annotations

from typing import Any

DISTRIBUTED_EXECUTOR_BACKENDS = ("mp", "ray")


def check_parallel_sizes(text_config: Any, tp: int, pp: int) -> None:
    """Raise a ValueError naming the numbers when the model cannot be split so."""
    for name, value in (("tensor_parallel_size", tp), ("pipeline_parallel_size", pp)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    if heads % tp:
        raise ValueError(
            f"Total number of attention heads ({heads}) must be divisible by "
            f"tensor_parallel_size ({tp})."
        )
    if tp <= kv_heads and kv_heads % tp:
        raise ValueError(
            f"Total number of KV heads ({kv_heads}) must be divisible by tensor_parallel_size "
            f"({tp})."
        )
    if tp > kv_heads and tp % kv_heads:
        raise ValueError(
            f"tensor_parallel_size ({tp}) is larger than the number of KV heads ({kv_heads}) "
            "and not a multiple of it: KV heads are replicated whole, so each must land on "
            f"the same number of ranks."
        )
    inter = text_config.intermediate_size
    if inter % tp:
        raise ValueError(
            f"The MLP's intermediate size ({inter}) must be divisible by tensor_parallel_size "
            f"({tp})."
        )
    layers = text_config.num_hidden_layers
    if pp > layers:
        raise ValueError(
            f"pipeline_parallel_size ({pp}) is larger than the number of layers ({layers}): "
            "every stage needs at least one layer."
        )


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """The layers of pipeline stage ``stage``: contiguous, as even as possible, the first
    stages taking one more when the count does not divide (vLLM gives the extra layers to
    the last stages instead; either keeps the stages within one layer of each other)."""
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))
