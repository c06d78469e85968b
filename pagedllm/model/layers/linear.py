"""Linear layers, including merged ones (q/k/v, gate/up) that load several checkpoint
tensors into row ranges ("shards") of one weight.

A layer loads its own checkpoint tensors (``load``) and knows which it still lacks
(``missing``); ``LinearMaker`` builds one per checkpoint module set, so a quantized layer
(``pagedllm.model.layers.fp8_linear``) replaces a plain one without touching the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pagedllm.model.layers.device_ops import DeviceOps

# (in_features, out_features, bias, output_sizes, checkpoint module names) -> a layer
LinearMaker = Callable[[int, int, bool, "list[int] | None", Sequence[str]], "Linear"]


class Linear(nn.Module):
    """``y = x W^T + b``, by the device's product (``ops.linear``). ``output_sizes`` splits
    the rows into shards loaded separately."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        dtype: torch.dtype,
        output_sizes: list[int] | None = None,
        *,
        ops: DeviceOps,
    ) -> None:
        super().__init__()
        self.ops = ops
        self.in_features = in_features
        self.out_features = out_features
        self.output_sizes = output_sizes or [out_features]
        assert sum(self.output_sizes) == out_features, "shards must cover the output rows"
        self.dtype = dtype
        self.weight = self.make_weight(out_features, in_features, dtype)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), False) if bias else None
        self._loaded: set[tuple[str, int | None]] = set()

    def make_weight(self, out_features: int, in_features: int, dtype: torch.dtype) -> nn.Parameter:
        return nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight, self.bias)

    def gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``self(silu(gate) * up)`` for gate_up [..., 2 * in_features], gate first (the
        MLP's down projection), by the device's ``gated_linear``, which may fuse the two."""
        return self.ops.gated_linear(gate_up, self.weight, self.bias)

    # -- loading -------------------------------------------------------------------------

    def load(self, name: str, loaded: torch.Tensor, shard: int | None) -> None:
        """Load checkpoint tensor ``<module>.<name>`` into the whole layer (``shard`` None)
        or into one shard's rows."""
        if name not in self.checkpoint_names():
            raise ValueError(
                f"Checkpoint tensor {name!r} matches no parameter of {type(self).__name__} "
                f"(expected {', '.join(self.checkpoint_names())})."
            )
        self._load(name, loaded, shard)
        self._loaded.add((name, shard))

    def _load(self, name: str, loaded: torch.Tensor, shard: int | None) -> None:
        param = getattr(self, name)
        copy_checked(self.rows(param.data, shard), loaded, name, shard)

    def checkpoint_names(self) -> tuple[str, ...]:
        """The tensors each shard needs from the checkpoint."""
        return ("weight", "bias") if self.bias is not None else ("weight",)

    def missing(self) -> list[str]:
        """``name#shard`` (or ``name``) of each needed tensor not loaded yet."""
        return [
            name if shard is None else f"{name}#{shard}"
            for name in self.checkpoint_names()
            for shard in self.shards()
            if (name, shard) not in self._loaded
        ]

    def shards(self) -> list[int | None]:
        """The shard ids checkpoint tensors load into: None for an unmerged layer."""
        return [None] if len(self.output_sizes) == 1 else list(range(len(self.output_sizes)))

    def finish_loading(self) -> None:
        """Called once every tensor is in (layers that derive state from them override)."""

    def rows(self, tensor: torch.Tensor, shard: int | None) -> torch.Tensor:
        """The whole tensor, or the rows of one shard (dimension 0)."""
        if shard is None or len(self.output_sizes) == 1:
            return tensor
        start = sum(self.output_sizes[:shard])
        return tensor.narrow(0, start, self.output_sizes[shard])

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.output_sizes}, bias={self.bias is not None}"


def plain_linears(
    dtype: torch.dtype, ops: DeviceOps, layer: type[Linear] | None = None
) -> LinearMaker:
    """Layers of one class (``Linear``, in the model's dtype, by default), whatever the
    checkpoint module."""
    cls = layer or Linear

    def make(
        in_features: int,
        out_features: int,
        bias: bool,
        output_sizes: list[int] | None,
        names: Sequence[str],
    ) -> Linear:
        return cls(in_features, out_features, bias, dtype, output_sizes, ops=ops)

    return make


def copy_checked(target: torch.Tensor, loaded: torch.Tensor, name: str, shard: int | None) -> None:
    if target.shape != loaded.shape:
        raise ValueError(
            f"Checkpoint tensor {name!r} of shape {tuple(loaded.shape)} does not fit a "
            f"parameter (shard {shard}) of shape {tuple(target.shape)}."
        )
    target.copy_(loaded)


def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` computed as ``(W x^T)^T``: on CPU, MKL runs the [out, in] x [in, tokens]
    product 10-40% faster than the [tokens, in] x [in, out] one at decode batch sizes (and
    never slower; measured on the 2-core CI machine). The result is a transposed view."""
    if bias is None:
        return torch.mm(weight, x.t()).t()
    return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()
