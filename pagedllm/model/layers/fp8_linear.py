"""A linear layer with FP8 (e4m3) weights and one float32 scale per output row.

It loads what the checkpoint holds: FP8 weights with per-tensor or per-row
``weight_scale`` (a per-tensor scale becomes its shard's rows' scales, exactly), and a
static ``input_scale`` where the scheme has one; or full-precision weights, quantized row
by row as they arrive (``--quantization fp8``), so a full-precision copy of the model never
exists on the device.

Computation, by what the step and device allow (the device's kernels: ``DeviceOps.fp8``,
chosen when the model is built; the choice among them: ``finish_loading``):
- small batches (up to 16 rows with FP8 tensor cores, 64 without: decode steps) on CUDA with
  16-bit activations: with FP8 tensor cores and a dynamic scheme, one Triton kernel
  quantizes the activations as it loads them and multiplies on tensor cores
  (``kernels/fp8_w8a8_matmul``; for one row the MLP's down projection applies the
  activation there too, ``gated``); otherwise one reads the FP8 weights and widens them in registers
  (``kernels/fp8_weight_matmul``), activations unquantized, as exact as weight-only FP8;
- larger batches on a GPU with FP8 tensor cores (compute capability 8.9+) and bfloat16
  activations: the activations are quantized (per token, or with the static scale) and the
  product runs in ``torch._scaled_mm``;
- elsewhere (the CPU, older GPUs, float32 models, weight-only schemes): the weights are
  widened inside a torch product (``fp8.weight_only_linear``): the same stored weights,
  working everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from pagedllm.logger import init_logger
from pagedllm.model.layers.fp8 import (
    FP8_DTYPE,
    Quantizer,
    quantize_rows_reference,
    quantize_weight,
    scaled_mm_linear,
    weight_only_linear,
)
from pagedllm.model.layers.linear import Linear, LinearMaker, copy_checked
from pagedllm.quantization import Fp8Scheme, QuantConfig

if TYPE_CHECKING:
    from pagedllm.model.layers.device_ops import DeviceOps

logger = init_logger(__name__)


class Fp8Linear(Linear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        dtype: torch.dtype,
        output_sizes: list[int] | None,
        scheme: Fp8Scheme,
        *,
        ops: DeviceOps,
    ) -> None:
        super().__init__(in_features, out_features, bias, dtype, output_sizes, ops=ops)
        self.scheme = scheme
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32), False)
        # Static scheme: one input scale per shard as loaded; their max once loaded.
        self.input_scale = (
            nn.Parameter(torch.ones(len(self.output_sizes), dtype=torch.float32), False)
            if scheme.activations == "static"
            else None
        )
        self.act_scale: torch.Tensor | None = None
        self.scale_row: torch.Tensor | None = None  # weight_scale as [1, out] for the GEMM
        self.use_fp8_gemm = False
        self.quantize_activations: Quantizer = quantize_rows_reference
        self.small_batch_kernel = False
        self.small_batch_rows = 0
        self.small_batch_matmul: Callable[..., torch.Tensor] | None = None
        # The same product taking [gate | up] rows, the activation applied inside (``gated``)
        self.small_batch_gated_matmul: Callable[..., torch.Tensor] | None = None

    def make_weight(self, out_features: int, in_features: int, dtype: torch.dtype) -> nn.Parameter:
        return nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._small_batch(x):
            assert self.small_batch_matmul is not None
            return self.small_batch_matmul(x, self.weight, self.weight_scale, self.bias)
        if self.use_fp8_gemm:
            assert self.scale_row is not None, "finish_loading() sets the GEMM's scales"
            return scaled_mm_linear(
                x, self.weight, self.scale_row, self.act_scale, self.bias,
                self.quantize_activations,
            )  # fmt: skip
        return weight_only_linear(x, self.weight, self.weight_scale, self.bias, self.ops.linear)

    def gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.small_batch_gated_matmul is not None and self._small_batch(gate_up):
            return self.small_batch_gated_matmul(gate_up, self.weight, self.weight_scale, self.bias)
        return self(self.ops.silu_and_mul(gate_up))  # not ops.gated_linear: FP8 weights

    def _small_batch(self, x: torch.Tensor) -> bool:
        """Whether the small-batch kernel takes x: [M, K] rows, few enough, unit stride."""
        return (
            self.small_batch_kernel
            and x.dim() == 2
            and x.shape[0] <= self.small_batch_rows
            and x.stride(1) == 1
        )

    # -- loading -------------------------------------------------------------------------

    def checkpoint_names(self) -> tuple[str, ...]:
        names = ["weight"]
        if self.scheme.serialized:
            names.append("weight_scale")
        if self.input_scale is not None:
            names.append("input_scale")
        if self.bias is not None:
            names.append("bias")
        return tuple(names)

    def _load(self, name: str, loaded: torch.Tensor, shard: int | None) -> None:
        if name == "weight":
            self._load_weight(loaded, shard)
        elif name == "weight_scale":
            self._load_weight_scale(loaded, shard)
        elif name == "input_scale":
            assert self.input_scale is not None
            if loaded.numel() != 1:
                raise ValueError(
                    f"input_scale must be one value per tensor, got shape {tuple(loaded.shape)}."
                )
            self.input_scale.data[shard or 0] = loaded.float().reshape(())
        else:
            super()._load(name, loaded, shard)

    def _load_weight(self, loaded: torch.Tensor, shard: int | None) -> None:
        if loaded.dtype == FP8_DTYPE and self.scheme.serialized:
            copy_checked(self.rows(self.weight.data, shard), loaded, "weight", shard)
        elif loaded.dtype.is_floating_point and loaded.element_size() >= 2:
            if self.scheme.serialized:
                raise ValueError(
                    f"Checkpoint weight is {loaded.dtype}, but the checkpoint's "
                    "quantization_config says its weights are FP8 (float8_e4m3fn)."
                )
            self.quantize_into(loaded, shard)
        else:
            raise ValueError(
                f"Checkpoint weight is {loaded.dtype}; pagedllm's FP8 layers load "
                "float8_e4m3fn weights or full-precision ones."
            )

    def _load_weight_scale(self, loaded: torch.Tensor, shard: int | None) -> None:
        rows = self.rows(self.weight_scale.data, shard)
        values = loaded.float().reshape(-1)
        if values.numel() == 1:  # per tensor: every row of the shard
            rows.fill_(values[0].item())
        elif values.numel() == rows.numel():  # per output channel: [rows] or [rows, 1]
            rows.copy_(values)
        else:
            raise ValueError(
                f"weight_scale of shape {tuple(loaded.shape)} is neither per tensor nor per "
                f"output row ({rows.numel()} rows); block-wise scales are not supported."
            )

    def quantize_into(self, weight: torch.Tensor, shard: int | None) -> None:
        """Quantize full-precision rows of one shard (on this layer's device)."""
        target = self.rows(self.weight.data, shard)
        if target.shape != weight.shape:
            raise ValueError(
                f"Checkpoint weight of shape {tuple(weight.shape)} does not fit a parameter "
                f"(shard {shard}) of shape {tuple(target.shape)}."
            )
        q, scale = quantize_weight(weight.to(target.device))
        target.copy_(q)
        self.rows(self.weight_scale.data, shard).copy_(scale)
        self._loaded.add(("weight_scale", shard))

    def fill_random(self, generator: torch.Generator, bound: float) -> None:
        """Dummy weights: uniform in [-bound, bound] in the model's dtype, then quantized
        (as ``--quantization fp8`` would load them); input scales stay 1."""
        for shard in self.shards():
            shape = self.rows(self.weight.data, shard).shape
            weight = torch.empty(shape, dtype=self.dtype, device=self.weight.device)
            self.quantize_into(weight.uniform_(-bound, bound, generator=generator), shard)

    def quantized_parameters(self) -> list[nn.Parameter]:
        """The parameters ``fill_random`` sets (a dummy loader must leave them alone)."""
        return [p for p in (self.weight, self.weight_scale, self.input_scale) if p is not None]

    def finish_loading(self) -> None:
        if self.input_scale is not None:
            # One scale for the merged layer's one input: the largest, so that no shard's
            # calibrated range is clipped.
            self.act_scale = self.input_scale.max().reshape(1)
        self.scale_row = self.weight_scale.view(1, -1)
        kernels = self.ops.fp8
        if kernels is not None:
            self.quantize_activations = kernels.quantize_rows
            self.small_batch_matmul = kernels.small_batch_matmul
            self.small_batch_kernel = self.dtype in (torch.bfloat16, torch.float16)
        self.use_fp8_gemm = fp8_gemm_supported(self.ops, self.dtype, self.scheme) and (
            self.in_features % 16 == 0 and self.out_features % 16 == 0  # _scaled_mm's tiles
        )
        if kernels is not None and self.small_batch_kernel:
            self.small_batch_rows = kernels.gemm_rows if self.use_fp8_gemm else kernels.max_rows
            dynamic = self.scheme.activations == "dynamic"
            if self.use_fp8_gemm and dynamic and kernels.activation_small_batch_matmul:
                # The scheme quantizes activations as they come (as _scaled_mm above
                # gemm_rows does): small batches may too, and read the FP8 weights on tensor
                # cores as stored. A static scheme's one input scale is not what that kernel
                # computes: it keeps the widening kernel.
                self.small_batch_matmul = kernels.activation_small_batch_matmul
                self.small_batch_gated_matmul = kernels.activation_small_batch_gated_matmul

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, fp8={self.scheme}, fp8_gemm={self.use_fp8_gemm}, "
            f"small_batch_kernel={self.small_batch_kernel}"
        )


def fp8_gemm_supported(ops: DeviceOps, dtype: torch.dtype, scheme: Fp8Scheme) -> bool:
    """FP8 tensor-core GEMMs: a CUDA device of compute capability 8.9+ (Ada, Hopper and
    later), bfloat16 activations (row-wise scaled ``_scaled_mm`` writes bfloat16), and a
    scheme that quantizes activations."""
    if ops.fp8 is None or dtype != torch.bfloat16 or scheme.activations == "none":
        return False
    return ops.fp8.tensor_cores


def fp8_linears(dtype: torch.dtype, quant: QuantConfig, ops: DeviceOps) -> LinearMaker:
    """Layers whose checkpoint modules ``quant`` quantizes become ``Fp8Linear``; the rest
    stay in ``dtype``."""

    def make(
        in_features: int,
        out_features: int,
        bias: bool,
        output_sizes: list[int] | None,
        names: Sequence[str],
    ) -> Linear:
        scheme = quant.scheme_for(names)
        if scheme is None:
            return Linear(in_features, out_features, bias, dtype, output_sizes, ops=ops)
        return Fp8Linear(in_features, out_features, bias, dtype, output_sizes, scheme, ops=ops)

    return make


def log_fp8_layers(model: nn.Module) -> None:
    """One line: how many layers hold FP8 weights, and how they multiply."""
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    if not layers:
        return
    gemm = sum(layer.use_fp8_gemm for layer in layers)
    small = sum(layer.small_batch_kernel for layer in layers)
    logger.info(
        "FP8 weights in %d linear layers: %d on FP8 tensor cores, %d widened inside the "
        "product (weight-only); %d with the small-batch FP8-weight kernel",
        len(layers), gemm, len(layers) - gemm, small,
    )  # fmt: skip
