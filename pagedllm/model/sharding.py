"""How one rank's share of the model is cut from the checkpoint (tensor parallelism) and
which layers it holds (pipeline parallelism).

Megatron's split, as vLLM makes it: q/k/v and gate/up are column-parallel (each rank holds
whole heads / a slice of the intermediate rows), o_proj and down_proj row-parallel (the
matching input columns; their outputs are summed by one all-reduce each, and their bias is
added once, on TP rank 0), the embedding and LM head vocab-parallel (rows, padded to equal
parts). KV heads are split too, or replicated when there are fewer than ranks: rank r then
holds KV head ``r // (tp // num_kv_heads)``, the one its query heads attend with. Norms and
KV scales are replicated.

``region`` answers, for a checkpoint tensor's name and full shape, which slice this rank
reads (``Region``), all of it (None) or none (``SKIP``): the loaders read only that slice.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagedllm.distributed.parallel_state import ModelParallel
from pagedllm.distributed.sizes import stage_layers

if TYPE_CHECKING:
    from pagedllm.model.decoder import DecoderSpec


@dataclass(frozen=True)
class Region:
    dim: int
    start: int
    length: int


SKIP = "skip"

_LAYER = re.compile(r"model\.layers\.(\d+)\.")
_COLUMN = re.compile(r"\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.")
_ROW = re.compile(r"\.(o_proj|down_proj)\.")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class ShardPlan:
    spec: DecoderSpec  # the whole model's
    parallel: ModelParallel

    @property
    def tp(self) -> int:
        return self.parallel.tp_size

    @property
    def num_heads(self) -> int:
        return self.spec.num_heads // self.tp

    @property
    def num_kv_heads(self) -> int:
        return max(1, self.spec.num_kv_heads // self.tp)

    @property
    def kv_head_start(self) -> int:
        kv, rank = self.spec.num_kv_heads, self.parallel.tp_rank
        return rank // (self.tp // kv) if self.tp >= kv else rank * self.num_kv_heads

    @property
    def intermediate_size(self) -> int:
        return self.spec.intermediate_size // self.tp

    @property
    def vocab_per_rank(self) -> int:
        return -(-self.spec.vocab_size // self.tp)

    @property
    def vocab_start(self) -> int:
        return self.parallel.tp_rank * self.vocab_per_rank

    @property
    def layers(self) -> range:
        return stage_layers(self.spec.num_layers, self.parallel.pp_size, self.parallel.pp_rank)

    @property
    def holds_embedding(self) -> bool:
        """The first stage embeds; the last holds it too when the LM head shares it."""
        p = self.parallel
        return p.is_first_stage or (p.is_last_stage and self.spec.tie_word_embeddings)

    def local_spec(self) -> DecoderSpec:
        """The per-rank sizes the layers are built with (same layer code as one rank)."""
        return dataclasses.replace(
            self.spec,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
        )

    def region(self, name: str, shape: tuple[int, ...]) -> Region | str | None:
        layer = _LAYER.match(name)
        if layer is not None:
            if int(layer.group(1)) not in self.layers:
                return SKIP
            return self._layer_region(name, shape)
        if name in _VOCAB:
            return self._vocab_region(name, shape)
        if name.startswith("model.norm.") and not self.parallel.is_last_stage:
            return SKIP
        return None

    def _vocab_region(self, name: str, shape: tuple[int, ...]) -> Region | str | None:
        p = self.parallel
        if name == "lm_head.weight" and not p.is_last_stage:
            return SKIP
        if name == "model.embed_tokens.weight" and not self.holds_embedding:
            return SKIP
        if self.tp == 1:
            return None
        start = min(self.vocab_start, shape[0])
        return Region(0, start, min(self.vocab_per_rank, shape[0] - start))

    def _layer_region(self, name: str, shape: tuple[int, ...]) -> Region | str | None:
        if self.tp == 1:
            return None
        column = _COLUMN.search(name)
        if column is not None:
            rows, start, length = self._column_rows(column.group(1))
            # Only tensors laid out by output row are cut (weights, biases, per-row
            # scales); a per-tensor scale is the same on every rank.
            return Region(0, start, length) if shape and shape[0] == rows else None
        row = _ROW.search(name)
        if row is not None:
            if name.endswith(".bias"):
                return None if self.parallel.tp_rank == 0 else SKIP
            cols, start, length = self._row_columns(row.group(1))
            return Region(1, start, length) if len(shape) == 2 and shape[1] == cols else None
        return None

    def _column_rows(self, module: str) -> tuple[int, int, int]:
        """(full rows, this rank's first row, its row count) of a column-parallel module."""
        d, rank = self.spec.head_dim, self.parallel.tp_rank
        if module == "q_proj":
            return self.spec.num_heads * d, rank * self.num_heads * d, self.num_heads * d
        if module in ("k_proj", "v_proj"):
            n = self.num_kv_heads
            return self.spec.num_kv_heads * d, self.kv_head_start * d, n * d
        inter = self.intermediate_size
        return self.spec.intermediate_size, rank * inter, inter

    def _row_columns(self, module: str) -> tuple[int, int, int]:
        rank = self.parallel.tp_rank
        if module == "o_proj":
            width = self.num_heads * self.spec.head_dim
            return self.spec.num_heads * self.spec.head_dim, rank * width, width
        inter = self.intermediate_size
        return self.spec.intermediate_size, rank * inter, inter
