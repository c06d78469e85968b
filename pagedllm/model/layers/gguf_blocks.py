"""GGUF weights kept as the file stores them, on the CPU: linear layers, the token
embedding and the LM head that compute on Q4_0 / Q4_1 / Q8_0 / Q4_K / Q6_K blocks directly
(``pagedllm.kernels.gguf_cpu``), so the weights in memory are the file's bytes.

The GGUF loader hands these layers ``StoredBlocks`` for tensors of those types and dense
float tensors for the rest (F32 / F16, and the types the kernels lack, e.g. Q5_K, Q2_K,
which it dequantizes). A merged layer (q/k/v, gate/up) keeps blocks only when every shard
arrived as blocks of one type (its rows are then the shards' rows, concatenated); otherwise
it holds the dequantized weight in the model dtype and computes as a plain ``Linear``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from pagedllm.config import gguf_blocks_wanted
from pagedllm.kernels import cpu_extension, gguf_cpu
from pagedllm.logger import init_logger
from pagedllm.model.layers.activation import silu_and_mul
from pagedllm.model.layers.device_ops import DeviceOps
from pagedllm.model.layers.embedding import VocabLayers
from pagedllm.model.layers.linear import Linear, LinearMaker, plain_linears

if TYPE_CHECKING:
    from pagedllm.config import ModelConfig

logger = init_logger(__name__)


@dataclass
class StoredBlocks:
    """A quantized GGUF tensor as stored: ``data`` uint8 [rows, row bytes], each row whole
    blocks of ``qtype`` (a GGMLQuantizationType value in ``gguf_cpu.STORED_TYPES``) holding
    ``columns`` values."""

    qtype: int
    columns: int
    data: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.data.shape[0], self.columns)

    def dequantize(self) -> torch.Tensor:
        every = torch.arange(self.data.shape[0])
        return gguf_cpu.rows(self.data, self.qtype, self.columns, every)


def _check_shape(loaded: torch.Tensor | StoredBlocks, shape: tuple[int, int], name: str) -> None:
    if tuple(loaded.shape) != shape:
        raise ValueError(
            f"Checkpoint tensor {name!r} of shape {tuple(loaded.shape)} does not fit a "
            f"parameter of shape {shape}."
        )


class GGUFLinear(Linear):
    """A linear layer on stored blocks of one type (``qtype`` set, ``weight`` the blocks);
    on runs of shards' rows of several types (``runs``: (qtype, rows) each, their blocks in
    ``run_weights``; a Q4_K_M file's q, k in Q4_K and v in Q6_K); or, where some shard is not
    blocks the kernels take, on a dense weight in the model dtype. The weights exist from
    ``finish_loading`` on."""

    qtype: int | None = None

    def make_weight(self, out_features: int, in_features: int, dtype: torch.dtype) -> nn.Parameter:
        self._pending: dict[int | None, torch.Tensor | StoredBlocks] = {}
        self.runs: list[tuple[int, int]] = []
        self.run_weights = nn.ParameterList()
        return nn.Parameter(torch.empty(0, dtype=torch.uint8), False)

    @property
    def stored(self) -> bool:
        """Whether the products run on blocks (one type or runs of several)."""
        return self.qtype is not None or bool(self.runs)

    def _load(self, name: str, loaded: torch.Tensor | StoredBlocks, shard: int | None) -> None:
        if name != "weight":  # a bias: GGUF keeps it in F32
            if isinstance(loaded, StoredBlocks):
                raise ValueError(f"Checkpoint tensor {name!r} is quantized; a bias cannot be.")
            super()._load(name, loaded, shard)
            return
        rows = self.output_sizes[shard] if shard is not None else self.out_features
        _check_shape(loaded, (rows, self.in_features), name)
        self._pending[shard] = loaded

    def finish_loading(self) -> None:
        parts = [self._pending.pop(shard) for shard in self.shards()]
        qtypes = {p.qtype if isinstance(p, StoredBlocks) else None for p in parts}
        if len(qtypes) == 1 and None not in qtypes:
            stored = [p.data for p in parts if isinstance(p, StoredBlocks)]
            self.weight = nn.Parameter(torch.cat(stored) if len(stored) > 1 else stored[0], False)
            self.qtype = qtypes.pop()
            return
        if None not in qtypes:  # blocks of several types: runs of shards of one type each
            blocks = [p for p in parts if isinstance(p, StoredBlocks)]  # every part, here
            for qtype, run in itertools.groupby(blocks, key=lambda p: p.qtype):
                data = torch.cat([p.data for p in run])
                self.run_weights.append(nn.Parameter(data, False))
                self.runs.append((qtype, data.shape[0]))
            return
        dense = [p.dequantize() if isinstance(p, StoredBlocks) else p for p in parts]
        self.weight = nn.Parameter(torch.cat(dense).to(self.dtype), False)
        self.qtype = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stored:
            return self.ops.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        if self.qtype is not None:
            y = gguf_cpu.linear(self.weight, self.qtype, rows)
        else:
            y = torch.cat(
                [gguf_cpu.linear(w, q, rows) for (q, _), w in zip(self.runs, self.run_weights)],
                dim=1,
            )
        if self.bias is not None:
            y += self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        if not self.stored:
            return super().gated(gate_up)
        return self(silu_and_mul(gate_up))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, qtype={self.qtype}, runs={self.runs}"


def gguf_linears(dtype: torch.dtype, ops: DeviceOps) -> LinearMaker:
    """Every linear layer a ``GGUFLinear``."""
    return plain_linears(dtype, ops, GGUFLinear)


class StoredTable(nn.Module):
    """A [vocab, hidden] table (the token embedding) on stored blocks or dense."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.shape = (vocab_size, hidden_size)
        self.dtype = dtype
        self.qtype: int | None = None
        self.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), False)

    def load_table(self, loaded: torch.Tensor | StoredBlocks, name: str) -> None:
        _check_shape(loaded, self.shape, name)
        if isinstance(loaded, StoredBlocks):
            self.weight = nn.Parameter(loaded.data, False)
            self.qtype = loaded.qtype
        else:
            self.weight = nn.Parameter(loaded.to(self.dtype), False)
            self.qtype = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.qtype is None:
            return nn.functional.embedding(input_ids, self.weight)
        flat = gguf_cpu.rows(self.weight, self.qtype, self.shape[1], input_ids.reshape(-1))
        return flat.to(self.dtype).reshape(*input_ids.shape, self.shape[1])


class StoredLMHead(StoredTable):
    """Hidden states -> float32 logits, on its own table or the embedding's (tied)."""

    def __init__(
        self, vocab_size: int, hidden_size: int, dtype: torch.dtype, ops: DeviceOps
    ) -> None:
        super().__init__(vocab_size, hidden_size, dtype)
        self.ops = ops
        self._tied: list[StoredTable] = []  # a list: not registered as a second owner

    def tie(self, embedding: StoredTable) -> None:
        self._tied = [embedding]

    @property
    def tied(self) -> bool:
        return bool(self._tied)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        table = self._tied[0] if self._tied else self
        if table.qtype is None:
            return self.ops.linear(hidden, table.weight, None).float().contiguous()
        return gguf_cpu.linear(table.weight, table.qtype, hidden)


# A token embedding and an LM head that take stored blocks (``CausalLM``'s ``vocab``).
STORED_VOCAB = VocabLayers(StoredTable, StoredLMHead)


def keeps_blocks(model_config: ModelConfig, device: torch.device, one_rank: bool) -> bool:
    """Whether this model's GGUF blocks are computed on as stored: where
    ``config.gguf_blocks_wanted`` says so and the kernels are built (else the weights are
    dequantized, as on the GPU; a failed build logged with its reason)."""
    mc = model_config
    quantized = mc.quantization is not None
    if not gguf_blocks_wanted(mc.files, mc.load_format, quantized, device.type, one_rank):
        return False
    reason = cpu_extension.unavailable_reason()
    if reason is not None:
        logger.warning("GGUF weights dequantized to %s: %s", model_config.dtype, reason)
        return False
    return True


def log_stored_layers(model: nn.Module) -> None:
    """How many linear layers (runs of rows, in a layer of several types) and tables compute
    on stored blocks, by type, and how many were dequantized."""
    from gguf import GGMLQuantizationType

    counts: dict[str, int] = {}
    dense = 0
    for module in model.modules():
        if isinstance(module, StoredLMHead) and module.tied:
            continue
        if isinstance(module, GGUFLinear) and module.runs:
            for qtype, _ in module.runs:
                name = GGMLQuantizationType(qtype).name
                counts[name] = counts.get(name, 0) + 1
        elif isinstance(module, (GGUFLinear, StoredTable)):
            if module.qtype is None:
                dense += 1
            else:
                name = GGMLQuantizationType(module.qtype).name
                counts[name] = counts.get(name, 0) + 1
    stored = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    logger.info("GGUF blocks as stored on the CPU: %s; %d layer(s) dequantized", stored, dense)
