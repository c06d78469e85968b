"""The one decoder for the Llama, Mistral, Qwen2 and Qwen3 families.

The families differ only in a few switches read from the config (``DecoderSpec``): biases on
q/k/v (Qwen2) or on all attention projections (Llama's ``attention_bias``), per-head q/k
RMSNorm (Qwen3), MLP bias, rope scaling, tied embeddings. Parameter names follow the
Hugging Face checkpoints, with q/k/v and gate/up merged into one projection each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from pagedllm.attention.backend import AttentionBackend
from pagedllm.attention.metadata import KVWrite
from pagedllm.distributed.communication import all_reduce
from pagedllm.distributed.parallel_state import ModelParallel
from pagedllm.model.checkpoint_names import KVScaleTarget, kv_scale_target, merged_target
from pagedllm.model.layers.activation import SUPPORTED_ACTIVATIONS
from pagedllm.model.layers.device_ops import DeviceOps
from pagedllm.model.layers.embedding import PLAIN_VOCAB, VocabLayers
from pagedllm.model.layers.gguf_blocks import StoredTable
from pagedllm.model.layers.linear import Linear, LinearMaker, plain_linears
from pagedllm.model.layers.norm import RMSNorm
from pagedllm.model.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model.sharding import ShardPlan

if TYPE_CHECKING:
    from pagedllm.model.cpu_decode import CpuDecodeStack


@dataclass(frozen=True)
class DecoderSpec:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    max_position: int
    rope: dict[str, Any]
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    # Per layer: the keys a query sees, counting itself (None: all before it).
    sliding_windows: tuple[int | None, ...] = ()

    def window(self, layer_idx: int) -> int | None:
        return self.sliding_windows[layer_idx] if self.sliding_windows else None

    @classmethod
    def from_config(cls, config: Any, family: str) -> DecoderSpec:
        act = getattr(config, "hidden_act", "silu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"hidden_act={act!r} is not supported; supported: {SUPPORTED_ACTIVATIONS}."
            )
        attention_bias = bool(getattr(config, "attention_bias", False))
        heads = config.num_attention_heads
        return cls(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size,
            rms_norm_eps=config.rms_norm_eps,
            max_position=config.max_position_embeddings,
            rope=rope_parameters(config),
            qkv_bias=attention_bias or family == "qwen2",
            o_bias=attention_bias and family != "qwen2",
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=family == "qwen3",
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            sliding_windows=sliding_windows(config),
        )


def sliding_windows(config: Any) -> tuple[int | None, ...]:
    """Each layer's attention window, as transformers reads the config: ``layer_types``
    ("sliding_attention" layers use ``sliding_window``), else every layer when
    ``sliding_window`` is set and ``use_sliding_window`` is not false (Mistral-7B-v0.1:
    4096 in every layer). Empty: full attention everywhere."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return ()
    types = getattr(config, "layer_types", None)
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    return (int(window),) * config.num_hidden_layers


class LayerWait(Protocol):
    """Something a layer waits for before it touches its KV cache (the host tier's copies
    back, ``worker/host_kv_cache.LayerLoads``)."""

    def wait(self, layer_idx: int) -> None: ...


@dataclass
class ForwardContext:
    """Per-step state every layer reads: attention metadata, KV caches, rotary rows."""

    backend: AttentionBackend
    attn_metadata: Any
    kv_caches: list[torch.Tensor]
    # This step's rotary rows, as the model's DeviceOps.rope_qk reads them (set by
    # CausalLM.forward from DeviceOps.rotary_rows).
    rotary_rows: Any = None
    # Set for the one step whose K/V values set an FP8 cache's scales (calculate_kv_scales).
    calculate_kv_scales: bool = False
    # Pipeline stages after the first: the previous stage's (hidden states, residual).
    intermediate: tuple[torch.Tensor, torch.Tensor] | None = None
    # Host-tier blocks still being copied in: each layer waits for its own before it writes
    # or reads its cache.
    kv_loads: LayerWait | None = None


# calculate_kv_scales, as vLLM defines it: the first step's largest |K| maps to 200 and
# largest |V| to 100, leaving headroom below e4m3's 448 for the tokens that come later.
KV_SCALE_RANGES = (200.0, 100.0)


def _row_bias(bias: bool, tp: ModelParallel | None) -> bool:
    """A row-parallel layer's bias is added once: on TP rank 0, before the all-reduce."""
    return bias and (tp is None or tp.tp_rank == 0)


class Attention(nn.Module):
    """``spec`` holds this rank's head counts; ``tp`` (None on one rank) makes o_proj
    row-parallel: its partial products are summed over the TP group."""

    def __init__(
        self,
        spec: DecoderSpec,
        layer_idx: int,
        dtype: torch.dtype,
        linears: LinearMaker,
        ops: DeviceOps,
        tp: ModelParallel | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.ops = ops
        self.num_heads, self.num_kv_heads, self.head_dim = (
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
        )
        q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        self.sizes = [q_size, kv_size, kv_size]
        self.scale = spec.head_dim**-0.5
        self.window = spec.window(layer_idx)
        prefix = f"model.layers.{layer_idx}.self_attn"
        self.qkv_proj = linears(
            spec.hidden_size, sum(self.sizes), spec.qkv_bias, self.sizes,
            [f"{prefix}.q_proj", f"{prefix}.k_proj", f"{prefix}.v_proj"],
        )  # fmt: skip
        self.o_proj = linears(
            q_size, spec.hidden_size, _row_bias(spec.o_bias, tp), None, [f"{prefix}.o_proj"]
        )
        self.tp_group = tp.tp_group if tp is not None else None
        # K's and V's dequantization scales when the cache is FP8 (stored = value / scale):
        # from the checkpoint, from calculate_kv_scales, or 1.
        self.register_buffer("kv_scale", torch.ones(2, dtype=torch.float32))
        # Per-head q/k norms (Qwen3): their weights, stacked, go to ops.rope_qk.
        self.q_norm = (
            RMSNorm(spec.head_dim, spec.rms_norm_eps, dtype, ops) if spec.qk_norm else None
        )
        self.k_norm = (
            RMSNorm(spec.head_dim, spec.rms_norm_eps, dtype, ops) if spec.qk_norm else None
        )
        self.norm_eps = spec.rms_norm_eps
        self._stacked_norms: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        num_tokens = x.shape[0]
        heads, kv_heads = self.num_heads, self.num_kv_heads
        # [tokens, heads + 2 * kv_heads, head_dim]: q heads, then k heads, then v heads. A view
        # whatever the projection's output layout (splitting one dimension never copies).
        qkv = self.qkv_proj(x).view(num_tokens, heads + 2 * kv_heads, self.head_dim)
        kv_cache = ctx.kv_caches[self.layer_idx]
        if ctx.kv_loads is not None:  # before anything writes this layer's cache
            ctx.kv_loads.wait(self.layer_idx)
        # The rotary op writes the new K/V (one kernel fewer), but in the step whose K/V
        # set an FP8 cache's scales: there the backend writes them after the scales are set.
        kv_write = None
        if not ctx.calculate_kv_scales:
            slots = ctx.backend.slot_mapping(ctx.attn_metadata)
            kv_write = KVWrite(kv_cache, slots, self.kv_scale)
        q, k = self.ops.rope_qk(
            qkv, heads, kv_heads, ctx.rotary_rows, self._qk_norm_weights(), self.norm_eps,
            kv_write,
        )  # fmt: skip
        v = qkv[:, heads + kv_heads :]
        if ctx.calculate_kv_scales:
            self._calculate_kv_scales(k, v)
        out = ctx.backend.forward(
            q, k, v, kv_cache, ctx.attn_metadata, self.scale, self.kv_scale, self.window,
            kv_written=kv_write is not None,
        )  # fmt: skip
        out = self.o_proj(out.reshape(num_tokens, -1))
        if self.tp_group is not None:
            out = all_reduce(out, self.tp_group)
        return out

    def _calculate_kv_scales(self, k: torch.Tensor, v: torch.Tensor) -> None:
        amax = torch.stack([k.abs().amax(), v.abs().amax()]).float()
        ranges = torch.tensor(KV_SCALE_RANGES, device=amax.device)
        self.kv_scale.copy_(torch.where(amax > 0, amax / ranges, 1.0))

    def load_kv_scale(self, index: int | None, loaded: torch.Tensor) -> None:
        """A checkpoint's K (index 0) or V (1) cache scale, or one for both (None)."""
        if loaded.numel() != 1:
            raise ValueError(
                f"KV cache scales must be one value per layer, got shape {tuple(loaded.shape)} "
                "(per-head scales are not supported)."
            )
        value = loaded.float().reshape(())
        if index is None:
            self.kv_scale.data[:] = value
        else:
            self.kv_scale.data[index] = value

    def _qk_norm_weights(self) -> torch.Tensor | None:
        """[2, head_dim]: q's then k's RMSNorm weights, stacked once (after loading)."""
        if self.q_norm is None or self.k_norm is None:
            return None
        if self._stacked_norms is None:
            self._stacked_norms = torch.stack([self.q_norm.weight, self.k_norm.weight])
        return self._stacked_norms


class MLP(nn.Module):
    """gate/up column-parallel and down row-parallel when ``tp`` is given (one all-reduce)."""

    def __init__(
        self,
        spec: DecoderSpec,
        layer_idx: int,
        linears: LinearMaker,
        ops: DeviceOps,
        tp: ModelParallel | None = None,
    ) -> None:
        super().__init__()
        inter = spec.intermediate_size
        prefix = f"model.layers.{layer_idx}.mlp"
        self.gate_up_proj = linears(
            spec.hidden_size, 2 * inter, spec.mlp_bias, [inter, inter],
            [f"{prefix}.gate_proj", f"{prefix}.up_proj"],
        )  # fmt: skip
        self.down_proj = linears(
            inter, spec.hidden_size, _row_bias(spec.mlp_bias, tp), None, [f"{prefix}.down_proj"]
        )
        self.tp_group = tp.tp_group if tp is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj.gated(self.gate_up_proj(x))
        if self.tp_group is not None:
            out = all_reduce(out, self.tp_group)
        return out


class DecoderLayer(nn.Module):
    def __init__(
        self,
        spec: DecoderSpec,
        layer_idx: int,
        dtype: torch.dtype,
        linears: LinearMaker,
        ops: DeviceOps,
        tp: ModelParallel | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(spec, layer_idx, dtype, linears, ops, tp)
        self.mlp = MLP(spec, layer_idx, linears, ops, tp)
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype, ops)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype, ops)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm.forward_residual(x, residual)
        x = self.self_attn(x, ctx)
        x, residual = self.post_attention_layernorm.forward_residual(x, residual)
        return self.mlp(x), residual


class MissingLayer(nn.Module):
    """A layer held by another pipeline stage: keeps the layer indices (and names) global."""


class DecoderModel(nn.Module):
    """The whole decoder, or one rank's share of it (``plan``: this rank's heads and MLP
    slice, its pipeline stage's layers; the embedding on the first stage, the final norm on
    the last)."""

    def __init__(
        self,
        spec: DecoderSpec,
        dtype: torch.dtype,
        linears: LinearMaker,
        ops: DeviceOps,
        plan: ShardPlan | None = None,
        vocab: VocabLayers = PLAIN_VOCAB,
    ) -> None:
        super().__init__()
        tp = plan.parallel if plan is not None and plan.tp > 1 else None
        held = plan.layers if plan is not None else range(spec.num_layers)
        self.embed_tokens: nn.Module | None = None
        if plan is None or plan.holds_embedding:
            self.embed_tokens = (
                VocabParallelEmbedding(spec.vocab_size, spec.hidden_size, dtype, tp)
                if tp is not None
                else vocab.embedding(spec.vocab_size, spec.hidden_size, dtype)
            )
        self.layers = nn.ModuleList(
            DecoderLayer(spec, i, dtype, linears, ops, tp) if i in held else MissingLayer()
            for i in range(spec.num_layers)
        )
        self.stage_layers = [self.layers[i] for i in held]  # the layers this rank runs
        # Decode steps with every layer in C++ (model/cpu_decode.py), set after loading
        # where the model qualifies.
        self.cpu_decode: CpuDecodeStack | None = None
        last = plan is None or plan.parallel.is_last_stage
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype, ops) if last else None

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The final hidden states; before the last pipeline stage, [2, tokens, hidden]:
        the hidden states and the residual, for the next stage (``ctx.intermediate``)."""
        residual: torch.Tensor | None = None
        if ctx.intermediate is None:
            assert self.embed_tokens is not None, "the first stage embeds"
            x = self.embed_tokens(input_ids)
        else:
            x, residual = ctx.intermediate
        if self.cpu_decode is not None and self.cpu_decode.takes(x.shape[0], ctx):
            x, residual = self.cpu_decode.run(x, ctx)
        else:
            for layer in self.stage_layers:
                x, residual = layer(x, residual, ctx)
        assert residual is not None, "a decoder has at least one layer"
        if self.norm is None:
            return torch.stack((x, residual))
        x, _ = self.norm.forward_residual(x, residual)
        return x


class CausalLM(nn.Module):
    """Decoder + LM head. ``forward`` returns hidden states for every token;
    ``compute_logits`` maps only the rows that are sampled. ``ops``: the device's
    implementation of each operation, held by every layer. ``linears`` builds the linear
    layers (plain ones in ``dtype`` unless a quantization scheme says otherwise); ``vocab``
    the embedding and LM head without tensor parallelism (tables in ``dtype`` unless it
    says otherwise: GGUF blocks as stored)."""

    def __init__(
        self,
        spec: DecoderSpec,
        dtype: torch.dtype,
        ops: DeviceOps,
        linears: LinearMaker | None = None,
        parallel: ModelParallel | None = None,
        vocab: VocabLayers = PLAIN_VOCAB,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.ops = ops
        # None on one rank: the whole model, built exactly as without parallelism.
        self.plan = ShardPlan(spec, parallel) if parallel and parallel.world_size > 1 else None
        local = self.plan.local_spec() if self.plan is not None else spec
        linears = linears or plain_linears(dtype, ops)
        self.model = DecoderModel(local, dtype, linears, ops, self.plan, vocab)
        self.lm_head = self._lm_head(spec, dtype, vocab)
        if spec.tie_word_embeddings and self.lm_head is not None:
            self.lm_head.tie(self.model.embed_tokens)  # type: ignore[arg-type]
        self.rotary = RotaryEmbedding(spec.head_dim, spec.max_position, spec.rope, dtype)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        ctx.rotary_rows = self.ops.rotary_rows(self.rotary, positions)
        return self.model(input_ids, ctx)

    def _lm_head(
        self, spec: DecoderSpec, dtype: torch.dtype, vocab: VocabLayers
    ) -> nn.Module | None:
        """On the last pipeline stage only; vocab-parallel with TP."""
        plan = self.plan
        if plan is not None and not plan.parallel.is_last_stage:
            return None
        if plan is not None and plan.tp > 1:
            return ParallelLMHead(spec.vocab_size, spec.hidden_size, dtype, plan.parallel, self.ops)
        return vocab.lm_head(spec.vocab_size, spec.hidden_size, dtype, self.ops)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.lm_head is not None, "logits are computed on the last pipeline stage"
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load Hugging Face-named tensors; raise if any parameter is left unloaded."""
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb." in name:
                continue
            if name == "lm_head.weight" and self.spec.tie_word_embeddings:
                continue
            kv_scale = kv_scale_target(name)
            if isinstance(kv_scale, KVScaleTarget):
                self._module(kv_scale.attention, name).load_kv_scale(kv_scale.index, tensor)
                continue
            if kv_scale == "skip":
                continue
            target, shard = merged_target(name)
            module_name, attr = target.rsplit(".", 1)
            module = self._module(module_name, name)
            if isinstance(module, Linear):
                module.load(attr, tensor, shard)
            elif isinstance(module, VocabParallelEmbedding):
                module.load_shard(tensor, name)  # this rank's rows (tensor parallel)
                loaded.add(target)
            elif isinstance(module, StoredTable):
                module.load_table(tensor, name)  # GGUF blocks as stored, or dense
                loaded.add(target)
            else:
                param = getattr(module, attr, None)
                if not isinstance(param, nn.Parameter):
                    raise ValueError(
                        f"Checkpoint tensor {name!r} matches no parameter of the model."
                    )
                _copy(param, tensor, name)
                loaded.add(target)
        self._check_loaded(loaded)
        self.finish_loading()

    def finish_loading(self) -> None:
        """Let layers derive what they compute with from what they loaded."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.finish_loading()

    def _module(self, module_name: str, tensor_name: str) -> Any:
        try:
            return self.get_submodule(module_name)
        except AttributeError:
            raise ValueError(
                f"Checkpoint tensor {tensor_name!r} matches no parameter of the model."
            ) from None

    def _check_loaded(self, loaded: set[str]) -> None:
        missing = []
        linears = {name for name, m in self.named_modules() if isinstance(m, Linear)}
        for name in linears:
            missing += [f"{name}.{part}" for part in self.get_submodule(name).missing()]
        for name, _ in self.named_parameters(remove_duplicate=False):
            if name.rsplit(".", 1)[0] in linears:
                continue
            if name == "lm_head.weight" and self.spec.tie_word_embeddings:
                continue
            if name not in loaded:
                missing.append(name)
        if missing:
            missing.sort()
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"The checkpoint is missing {len(missing)} tensors: {shown}")


def _copy(param: nn.Parameter, tensor: torch.Tensor, name: str) -> None:
    if param.shape != tensor.shape:
        raise ValueError(
            f"Checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, expected "
            f"{tuple(param.shape)}."
        )
    param.data.copy_(tensor)
