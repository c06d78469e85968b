"""Frozen, layered engine configuration, and ``EngineArgs`` that builds it.

``EngineArgs`` holds every user-facing option once, with vLLM's names and defaults; the CLI
and the ``LLM`` keywords are generated from it. ``create_engine_config()`` validates the
options against the model and returns an ``EngineConfig`` of frozen dataclasses. Values
computed at run time (the number of KV blocks) are returned by the worker, never written
back here.

torch is imported lazily (device detection only), so ``pagedllm.core`` stays torch-free.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagedllm.core.request_queue import POLICIES
from pagedllm.engine.vllm_options import VllmEngineOptions, cuda_graph_options, refusals
from pagedllm.logger import init_logger
from pagedllm.model_files import ModelFiles, resolve_model
from pagedllm.quantization import QuantConfig, resolve_kv_cache_dtype, resolve_quantization
from pagedllm.startup_problems import StartupProblems
from pagedllm.unused_modules import without_transformers_models

logger = init_logger(__name__)

_DTYPE_ALIASES = {
    "auto": "auto",
    "half": "float16",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float": "float32",
    "float32": "float32",
    "fp32": "float32",
}
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
PREEMPTION_MODES = ("recompute", "swap")
_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True)
class ModelConfig:
    model: str
    files: ModelFiles
    hf_config: Any  # transformers.PretrainedConfig
    architecture: str
    dtype: str  # "float32" | "bfloat16" | "float16"
    max_model_len: int
    seed: int
    load_format: str
    skip_tokenizer_init: bool
    tokenizer: str | None
    tokenizer_mode: str
    trust_remote_code: bool
    revision: str | None
    served_model_name: str
    generation_config: dict = field(default_factory=dict)
    max_logprobs: int = 20
    quantization: QuantConfig | None = None  # None: every layer in ``dtype``
    tokenizer_revision: str | None = None  # None: ``revision``, as vLLM
    download_dir: str | None = None

    @property
    def text_config(self) -> Any:
        return getattr(self.hf_config, "text_config", None) or self.hf_config

    @property
    def num_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        cfg = self.text_config
        return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads

    @property
    def head_dim(self) -> int:
        cfg = self.text_config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def kv_bytes_per_token(self, cache_dtype: str = "auto") -> int:
        """2 (K and V) x layers x kv heads x head dim x bytes of one cached value (the
        model's dtype, or 1 for an FP8 cache)."""
        element = self.dtype_bytes if cache_dtype == "auto" else 1
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element


@dataclass(frozen=True)
class CacheConfig:
    block_size: int
    enable_prefix_caching: bool
    gpu_memory_utilization: float
    # Bytes of KV cache; None on GPU means "size it from gpu_memory_utilization".
    kv_cache_memory_bytes: int | None
    # "auto" (the model's dtype), "fp8_e4m3" or "fp8_e5m2" (quantization.KV_CACHE_DTYPES).
    cache_dtype: str = "auto"
    # FP8 cache: K and V scales from the first step's values rather than the checkpoint.
    calculate_kv_scales: bool = False
    # Host memory (bytes, per rank) of the prefix cache's second tier (``swap_space``); 0: none.
    swap_space_bytes: int = 0


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool = True
    policy: str = "fcfs"
    long_prefill_token_threshold: int = 0
    # Schedule step N+1 while step N runs on the device (its sampled tokens stay there).
    async_scheduling: bool = False
    # "recompute", or "swap": a preempted request's full blocks go to the host tier first.
    preemption_mode: str = "recompute"
    # Seconds: prompt chunks are sized so that a step's predicted time stays within it
    # (``core/step_time.py``); 0: chunks as large as the budget allows.
    step_time_target: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"scheduling_policy must be one of {POLICIES}, got {self.policy!r}.")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ValueError(
                f"preemption_mode must be one of {PREEMPTION_MODES}, got {self.preemption_mode!r}."
            )
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}.")
        if not (math.isfinite(self.step_time_target) and self.step_time_target >= 0):
            raise ValueError(
                f"step_time_target must be a number of seconds >= 0, got {self.step_time_target}."
            )
        if self.step_time_target > 0 and not self.enable_chunked_prefill:
            raise ValueError(
                "step_time_target sizes prompt chunks; it needs chunked prefill (drop "
                "--no-enable-chunked-prefill, or set --step-time-target 0)."
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be greater than "
                f"or equal to max_num_seqs ({self.max_num_seqs})."
            )


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # "mp": one worker process per rank when there is more than one; one rank runs in the
    # engine core's own process ("uni"). "ray": one Ray actor per rank (even one), placed
    # through a Ray cluster.
    distributed_executor_backend: str = "mp"
    # Torch intra-op threads of each process that runs the model on the CPU. None: on CUDA
    # torch's own (the host only launches kernels); with several CPU ranks and none asked
    # for, each rank splits its own machine's physical cores (``prepare_rank_process``).
    cpu_threads: int | None = None
    # VLLM_CPU_OMP_THREADS_BIND: the CPUs of each rank (by rank), its threads default to
    # their number; None: the OS places them.
    cpu_binding: tuple[frozenset[int], ...] | None = None


@dataclass(frozen=True)
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device: str  # "cpu" | "cuda"
    enforce_eager: bool
    disable_log_stats: bool
    # Decode CUDA graph batch sizes: None, the worker's own pattern up to max_num_seqs
    # (capped at max_cudagraph_capture_size when given).
    cudagraph_capture_sizes: tuple[int, ...] | None = None
    max_cudagraph_capture_size: int | None = None
    structured_outputs_config: StructuredOutputsConfig = field(
        default_factory=lambda: StructuredOutputsConfig()
    )


STRUCTURED_OUTPUT_BACKENDS = ("auto", "xgrammar")


@dataclass(frozen=True)
class StructuredOutputsConfig:
    """Engine-wide structured-output options (vLLM's ``--structured-outputs-config``).

    xgrammar is the one backend, so ``disable_fallback`` holds by construction: a grammar
    xgrammar refuses is an error, never handed to another library.
    """

    backend: str = "auto"
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False

    @classmethod
    def from_value(cls, value: Any, guided_decoding_backend: str | None) -> StructuredOutputsConfig:
        options = dict(value or {})
        if guided_decoding_backend is not None:
            options.setdefault("backend", guided_decoding_backend)
        for name, default in (("reasoning_parser", ""), ("enable_in_reasoning", False)):
            if options.pop(name, default) not in (default, None):
                raise ValueError(
                    f"structured_outputs_config {name} is not supported by pagedllm yet."
                )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"Unknown structured_outputs_config option(s) {unknown}; known: {sorted(known)}."
            )
        config = cls(**options)
        if config.backend not in STRUCTURED_OUTPUT_BACKENDS:
            raise ValueError(
                f"Structured outputs backend {config.backend!r} is not supported: pagedllm "
                f"uses xgrammar (choose one of {STRUCTURED_OUTPUT_BACKENDS})."
            )
        return config


# vLLM options with no implementation here yet: accepted at their vLLM default, refused by
# name otherwise (never silently ignored).
UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "cpu_offload_gb": 0,
    "data_parallel_size": 1,
    "enable_lora": False,
    "speculative_config": None,
    "hf_overrides": None,
    "rope_scaling": None,
    "rope_theta": None,
    "code_revision": None,
    "num_gpu_blocks_override": None,
    "max_seq_len_to_capture": None,
    "enable_sleep_mode": False,
    "kv_transfer_config": None,
    "limit_mm_per_prompt": None,
    "mm_processor_kwargs": None,
    "override_generation_config": None,
    "allowed_local_media_path": "",
    "runner": "auto",
    "convert": "auto",
    "task": "auto",
    "disable_custom_all_reduce": False,
    "hf_token": None,
    "pooler_config": None,
    "override_pooler_config": None,
    "logits_processors": None,
}


# Values of those options that name what pagedllm does anyway (a generation engine).
SAME_AS_DEFAULT: dict[str, set[Any]] = {
    "runner": {"generate"},
    "task": {"generate"},
    "convert": {"none"},
}


class UsageContext(str, enum.Enum):
    """Who builds the engine (vLLM's names): the batch-size defaults depend on it."""

    UNKNOWN_CONTEXT = "UNKNOWN_CONTEXT"
    LLM_CLASS = "LLM_CLASS"
    API_SERVER = "API_SERVER"
    OPENAI_API_SERVER = "OPENAI_API_SERVER"
    OPENAI_BATCH_RUNNER = "OPENAI_BATCH_RUNNER"
    ENGINE_CONTEXT = "ENGINE_CONTEXT"


GiB = 1 << 30
# The server's step time target (``SchedulerConfig.step_time_target``): a token every half
# second at worst for the other clients while a long prompt is computed.
_SERVER_STEP_TIME_TARGET = 0.5
# When neither the device nor the usage has its own: vLLM's SchedulerConfig defaults.
_FALLBACK_BATCH = (2048, 128)


def batch_defaults(device: str, usage: UsageContext) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) when the user sets neither, as vLLM 0.26
    chooses them: an offline ``LLM`` batches more than a server (throughput over latency),
    and GPUs of 70 GiB or more (H100, H200; not the A100, where it measured slower) get
    larger batches."""
    if device == "cpu":
        table = {UsageContext.LLM_CLASS: (4096, 256), UsageContext.OPENAI_API_SERVER: (2048, 128)}
    else:
        memory, name = _gpu_memory_and_name()
        if memory >= 70 * GiB and "a100" not in name.lower():
            table = {
                UsageContext.LLM_CLASS: (16384, 1024),
                UsageContext.OPENAI_API_SERVER: (8192, 1024),
            }
        else:
            table = {
                UsageContext.LLM_CLASS: (8192, 256),
                UsageContext.OPENAI_API_SERVER: (2048, 256),
            }
    return table.get(usage, _FALLBACK_BATCH)


def _gpu_memory_and_name() -> tuple[int, str]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return props.total_memory, props.name


@dataclass
class EngineArgs(VllmEngineOptions):
    """Every engine option once, with vLLM's names. ``LLM(**kwargs)`` and the CLI map here;
    vLLM's options beyond pagedllm's own come from ``VllmEngineOptions`` (keyword-only)."""

    model: str | None = None
    """Model directory, .gguf file or cached Hugging Face repo id (default: the bundled
    SmolLM2-135M-Instruct)."""
    served_model_name: str | list[str] | None = None
    """The name(s) the API answers to (default: the model argument)."""
    tokenizer: str | None = None
    """Tokenizer directory or repo id (default: the model's own)."""
    tokenizer_mode: str = "auto"
    """auto (or hf): the tokenizer transformers loads for the model."""
    skip_tokenizer_init: bool = False
    """Load no tokenizer: prompts must be token ids and outputs are ids only."""
    trust_remote_code: bool = False
    """Let transformers run a model repository's own configuration code (the architecture
    must still be one pagedllm builds)."""
    revision: str | None = None
    """The model repository revision (branch, tag or commit) to use or download."""
    tokenizer_revision: str | None = None
    """The tokenizer repository's revision (default: --revision), as vLLM."""
    download_dir: str | None = None
    """The Hugging Face cache directory a model named by a repo id is looked up in and
    downloaded to (default: HF_HUB_CACHE)."""
    load_format: str = "auto"
    """auto, safetensors, gguf, or dummy (random weights of the right shapes)."""
    dtype: str = "auto"
    """auto (on the CPU by its features: float16 where it computes in float16 natively,
    else float32; on a GPU the checkpoint's half type, bfloat16 for float32 checkpoints),
    bfloat16, float16 or float32."""
    seed: int | None = 0
    """Seed of the engine's random state (sampling without a per-request seed)."""
    max_model_len: int | str | None = None
    """Longest prompt plus output in tokens (e.g. 4096 or 32k; default: the model's). -1 or
    auto: the model's maximum, shortened to what the KV cache holds when its size is known
    before loading (the CPU, or --kv-cache-memory-bytes)."""
    block_size: int | None = None
    """Tokens per KV-cache block (default 16)."""
    enable_prefix_caching: bool | None = None
    """Reuse KV blocks of identical prompt prefixes (default on; --no-enable-prefix-caching turns
    it off)."""
    gpu_memory_utilization: float = _DEFAULT_GPU_MEMORY_UTILIZATION
    """Share of the GPU's memory the engine may use, weights and KV cache included (GPU only)."""
    kv_cache_memory_bytes: int | str | None = None
    """The KV cache's size (e.g. 8G), instead of what gpu-memory-utilization leaves; required
    sizing on the CPU."""
    max_num_seqs: int | None = None
    """Most sequences in one step's batch (default by device, as vLLM)."""
    max_num_batched_tokens: int | str | None = None
    """Most tokens in one step (default by device, as vLLM)."""
    enable_chunked_prefill: bool | None = None
    """Split long prompts across steps (default on)."""
    long_prefill_token_threshold: int = 0
    """Prompts longer than this take at most this many tokens a step (0: no limit)."""
    step_time_target: float | None = None
    """Seconds a step should take at most while prompts are computed in chunks: each chunk is
    sized from the measured times of the last steps so that the step stays within it, and a
    long prompt takes more, shorter steps instead of holding every other request's next token
    (0: off; default 0.5 for the server, off for the offline LLM)."""
    scheduling_policy: str = "fcfs"
    """fcfs (arrival order) or priority (lower priority value first)."""
    async_scheduling: bool | None = None  # None: on with CUDA, off on the CPU
    """Schedule the next step while the GPU runs this one (default on with CUDA, off on the CPU)."""
    tensor_parallel_size: int = 1
    """Ranks to shard the model over (-tp): heads, MLP and vocabulary split Megatron-style,
    one worker process per rank (on the CPU over gloo)."""
    enforce_eager: bool = False
    """Run without CUDA graphs."""
    disable_log_stats: bool = False
    """Do not log throughput and cache statistics every few seconds."""
    device: str = "auto"
    """auto, cuda or cpu."""
    cpu_threads: int | None = None
    """On the CPU, torch's intra-op threads in each process that runs the model (default:
    PAGEDLLM_CPU_NUM_THREADS, else the physical cores this process may use, split among the
    ranks of this machine). At most the CPUs available: more only contend."""
    generation_config: str = "auto"
    """auto (sampling defaults from the model's generation_config.json), or vllm / pagedllm
    (none)."""
    quantization: str | None = None
    """Weight quantization (-q): fp8, or the checkpoint's own (fp8, compressed-tensors)."""
    kv_cache_dtype: str = "auto"
    """KV cache storage: auto (the model's dtype), fp8 / fp8_e4m3, fp8_e5m2."""
    calculate_kv_scales: bool = False
    """With an FP8 KV cache, compute each layer's scales from the first step."""
    swap_space: float = 0
    """GiB of host memory per rank (pinned with CUDA) for a second tier of the prefix cache:
    full blocks the KV cache evicts are kept there and copied back on a later prefix hit
    instead of being recomputed (0: none; needs prefix caching)."""
    preemption_mode: str | None = None
    """recompute (default): a preempted request reuses what stays cached and recomputes the
    rest; swap: its full blocks are first saved in the swap space and kept until it runs
    again (needs --swap-space)."""
    # vLLM options not implemented yet (see UNSUPPORTED_DEFAULTS).
    cpu_offload_gb: float = 0
    """Not supported: weights stay on the device."""
    pipeline_parallel_size: int = 1
    """Pipeline stages to split the layers over (-pp), one worker process per rank."""
    data_parallel_size: int = 1
    """Engine replicas (-dp); only 1 is supported."""
    enable_lora: bool = False
    """Not supported: no LoRA adapters yet."""
    speculative_config: dict | None = None
    """Not supported: no speculative decoding yet."""
    hf_overrides: dict | None = None
    """Not supported: the model's config is used as it is."""
    rope_scaling: dict | None = None
    """Not supported: the model's config is used as it is."""
    rope_theta: float | None = None
    """Not supported: the model's config is used as it is."""
    code_revision: str | None = None
    """Not supported: no remote code is run."""
    num_gpu_blocks_override: int | None = None
    """Not supported: size the cache with kv-cache-memory-bytes."""
    max_seq_len_to_capture: int | None = None
    """Not supported: CUDA graphs cover decode batches, whatever the length."""
    distributed_executor_backend: str | None = None
    """mp (default): worker processes on this machine. ray: Ray actors placed through a Ray
    cluster, one machine or several (the `ray` extra). uni only with one rank."""
    enable_sleep_mode: bool = False
    """Not supported."""
    compilation_config: Any = None
    """JSON (-cc, or -cc.KEY VALUE): cudagraph_mode NONE runs without CUDA graphs (as
    --enforce-eager), FULL_AND_PIECEWISE with them; cudagraph_capture_sizes and
    max_cudagraph_capture_size as the flags of those names; mode NONE (0). Other keys are
    refused by name: pagedllm does not use torch.compile."""
    kv_transfer_config: Any = None
    """Not supported: no disaggregated prefill."""
    limit_mm_per_prompt: Any = None
    """Not supported: text models only."""
    mm_processor_kwargs: Any = None
    """Not supported: text models only."""
    override_generation_config: Any = None
    """Not supported yet: use generation-config."""
    allowed_local_media_path: str = ""
    """Not supported: text models only."""
    runner: str = "auto"
    """Only auto or generate (the same here) is supported."""
    convert: str = "auto"
    """Only auto or none (the same here) is supported."""
    task: str = "auto"
    """Only auto or generate (the same here) is supported."""
    disable_custom_all_reduce: bool = False
    """Not supported: one device."""
    hf_token: str | bool | None = None
    """Not supported: nothing is downloaded at run time."""
    pooler_config: Any = None
    """Not supported: generation models only."""
    override_pooler_config: Any = None
    """Not supported: generation models only."""
    structured_outputs_config: dict[str, Any] | None = None
    """JSON: backend (xgrammar), disable_any_whitespace, disable_additional_properties."""
    guided_decoding_backend: str | None = None  # vLLM's older spelling of its backend
    """vLLM's older name for structured_outputs_config's backend (xgrammar)."""
    logits_processors: Any = None
    """Not supported on the command line: pass logits processors per request in Python."""
    max_logprobs: int = 20
    """Most logprobs (and prompt logprobs) a request may ask for."""

    def create_engine_config(
        self, usage_context: UsageContext = UsageContext.ENGINE_CONTEXT
    ) -> EngineConfig:
        """``usage_context``: who builds the engine (``LLM``, the server, a library), which
        sets the batch-size defaults (``batch_defaults``)."""
        problems = StartupProblems()
        self._refuse_unsupported(problems)
        graphs = problems.attempt(lambda: cuda_graph_options(self))
        device = problems.attempt(lambda: resolve_device(self.device))
        # What needs only config.json is checked even when the device is wrong (on the
        # CPU's terms), so one start reports every problem, before any weight loads.
        model_config = problems.attempt(lambda: self._model_config(device or "cpu"))
        cache_config = parallel_config = None
        if model_config is not None:
            parallel_config = problems.attempt(
                lambda: self._parallel_config(device or "cpu", model_config)
            )
            if device is not None:
                cache_config = problems.attempt(lambda: self._cache_config(device, model_config))
        problems.raise_if_any()
        assert graphs is not None and device is not None  # else raised above
        assert model_config is not None and cache_config is not None
        assert parallel_config is not None
        if _is_auto_length(self.max_model_len):
            model_config = _fit_to_cache(model_config, cache_config)
        max_len = model_config.max_model_len
        config = EngineConfig(
            model_config=model_config,
            cache_config=cache_config,
            scheduler_config=self._scheduler_config(device, max_len, usage_context),
            parallel_config=parallel_config,
            device=device,
            enforce_eager=graphs.eager,
            disable_log_stats=self.disable_log_stats,
            cudagraph_capture_sizes=graphs.capture_sizes,
            max_cudagraph_capture_size=graphs.max_capture_size,
            structured_outputs_config=StructuredOutputsConfig.from_value(
                self.structured_outputs_config, self.guided_decoding_backend
            ),
        )
        sched = config.scheduler_config
        logger.info("Non-default args: %s", self.non_default_args())
        logger.info(
            "Batches of up to %d sequences and %d tokens per step (%s on %s)",
            sched.max_num_seqs, sched.max_num_batched_tokens, usage_context.value, device,
        )  # fmt: skip
        return config

    def non_default_args(self) -> dict[str, Any]:
        """The options given a value other than their default (logged at start-up)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != (f.default if f.default is not dataclasses.MISSING
                                         else f.default_factory())  # type: ignore[misc]
        }  # fmt: skip

    # -- validation ----------------------------------------------------------------------

    def _refuse_unsupported(self, problems: StartupProblems) -> None:
        """Every option set to a value pagedllm cannot honour, into ``problems``."""
        problems.extend(refusals(self))  # vLLM's options at a value pagedllm cannot honour
        for name, default in UNSUPPORTED_DEFAULTS.items():
            value = getattr(self, name)
            if value != default and value not in SAME_AS_DEFAULT.get(name, ()):
                problems.add(f"{name}={value!r} is not supported by pagedllm yet; leave it unset.")
        if self.tokenizer_mode not in ("auto", "hf"):
            problems.add(f"tokenizer_mode={self.tokenizer_mode!r} is not supported; use 'auto'.")
        if self.load_format not in LOAD_FORMATS:
            problems.add(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}.")
        if self.generation_config not in ("auto", "vllm", "pagedllm"):
            problems.add(
                f"generation_config={self.generation_config!r} is not supported; use 'auto' "
                "(the model's generation_config.json) or 'vllm' (ignore it)."
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            problems.add(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}."
            )

    def _model_config(self, device: str) -> ModelConfig:
        files = resolve_model(self.model, self.revision, self.download_dir)
        hf_config = _load_hf_config(files, self.trust_remote_code)
        architecture = _architecture(hf_config)
        if self.load_format == "gguf" and not files.is_gguf:
            raise ValueError(f"load_format='gguf' but {files.name} is not a GGUF model.")
        if self.load_format == "safetensors" and files.is_gguf:
            raise ValueError(
                f"load_format='safetensors' but {files.name} is a GGUF model (its weights are "
                "the .gguf file); use load_format='auto' or 'gguf'."
            )
        served = self.served_model_name
        if isinstance(served, list):
            served = served[0] if served else None
        return ModelConfig(
            model=files.name,
            files=files,
            hf_config=hf_config,
            architecture=architecture,
            dtype=self._gguf_blocks_dtype(files, device)
            or resolve_dtype(self.dtype, hf_config, device),
            max_model_len=_max_model_len(self.max_model_len, hf_config),
            seed=0 if self.seed is None else self.seed,
            load_format=self.load_format,
            skip_tokenizer_init=self.skip_tokenizer_init,
            tokenizer=self.tokenizer,
            tokenizer_mode=self.tokenizer_mode,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
            served_model_name=served or files.name,
            generation_config=files.generation_config() if self.generation_config == "auto" else {},
            max_logprobs=self.max_logprobs,
            quantization=resolve_quantization(self.quantization, hf_config),
            tokenizer_revision=self.tokenizer_revision,
            download_dir=self.download_dir,
        )

    def _gguf_blocks_dtype(self, files: Any, device: str) -> str | None:
        """float32 for ``--dtype auto`` where the CPU will compute on a GGUF file's blocks
        (``gguf_blocks.keeps_blocks``: their products are float32 whatever the activations'
        dtype, and only float32 runs decode steps' layers in C++); None elsewhere.
        PAGEDLLM_CPU_DTYPE, where set, still decides."""
        from pagedllm import envs

        if str(self.dtype) != "auto" or envs.cpu_dtype() != "auto":
            return None
        one_rank = self.tensor_parallel_size * self.pipeline_parallel_size == 1
        if not gguf_blocks_wanted(
            files, self.load_format, self.quantization is not None, device, one_rank
        ):
            return None
        logger.info("dtype auto on the CPU: float32, since the GGUF's blocks are computed "
                    "in float32 by pagedllm's CPU kernels")  # fmt: skip
        return "float32"

    def _parallel_config(self, device: str, model_config: ModelConfig) -> ParallelConfig:
        from pagedllm.distributed.sizes import DISTRIBUTED_EXECUTOR_BACKENDS, check_parallel_sizes

        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        check_parallel_sizes(model_config.text_config, tp, pp)
        backend = self.distributed_executor_backend or "mp"
        known = backend in (*DISTRIBUTED_EXECUTOR_BACKENDS, "uni")
        if not known or (backend == "uni" and tp * pp > 1):
            raise ValueError(
                f"distributed_executor_backend={backend!r} is not supported; use 'mp', 'ray' "
                "(or 'uni' with tensor_parallel_size=pipeline_parallel_size=1)."
            )
        if (tp * pp > 1 or backend == "ray") and device != "cpu":
            raise ValueError(
                f"tensor_parallel_size={tp} x pipeline_parallel_size={pp} with "
                f"distributed_executor_backend={backend!r} runs on the CPU (gloo) only in this "
                "version: the CUDA graphs and Triton attention are not yet built per rank. Use "
                "device='cpu', or tensor and pipeline parallel size 1 with 'mp'."
            )
        if backend == "ray":
            from pagedllm.executor.ray_cluster import MISSING_RAY, ray_installed

            if not ray_installed():
                raise ValueError(MISSING_RAY)
        if device != "cpu":
            if self.cpu_threads is not None:
                raise ValueError(
                    f"cpu_threads={self.cpu_threads} sizes the threads that run the model on the "
                    f"CPU, but it runs on {device}; leave it unset there."
                )
            return ParallelConfig(tp, pp, "ray" if backend == "ray" else "mp")
        binding = _cpu_binding(tp * pp, backend)
        threads = resolve_cpu_threads(self.cpu_threads, tp * pp, binding)
        return ParallelConfig(tp, pp, "ray" if backend == "ray" else "mp", threads, binding)

    def _cache_config(self, device: str, model_config: ModelConfig) -> CacheConfig:
        block_size = 16 if self.block_size is None else self.block_size
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}.")
        kv_bytes = parse_size(self.kv_cache_memory_bytes)
        if device == "cpu" and self.gpu_memory_utilization != _DEFAULT_GPU_MEMORY_UTILIZATION:
            # Said, not silently dropped: a command copied from a GPU machine still runs.
            logger.warning(
                "gpu_memory_utilization=%s does not apply on the CPU: the KV cache takes "
                "kv_cache_memory_bytes (%s).", self.gpu_memory_utilization,
                self.kv_cache_memory_bytes or f"default {DEFAULT_CPU_KV_CACHE_BYTES >> 30} GiB",
            )  # fmt: skip
        if kv_bytes is None and device == "cpu":
            kv_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        if kv_bytes is not None and kv_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes must be positive, got {kv_bytes}.")
        caching = True if self.enable_prefix_caching is None else self.enable_prefix_caching
        cache_dtype = resolve_kv_cache_dtype(
            self.kv_cache_dtype, model_config.quantization, model_config.dtype
        )
        if self.calculate_kv_scales and cache_dtype == "auto":
            raise ValueError(
                "calculate_kv_scales computes the scales of an FP8 KV cache; set "
                "kv_cache_dtype='fp8' with it, or leave it unset."
            )
        swap_bytes = self._swap_space_bytes(caching)
        return CacheConfig(
            block_size, caching, self.gpu_memory_utilization, kv_bytes, cache_dtype,
            self.calculate_kv_scales, swap_bytes,
        )  # fmt: skip

    def _swap_space_bytes(self, caching: bool) -> int:
        """The host tier's bytes per rank: ``swap_space`` (GiB per rank, vLLM's old swap
        space) or ``kv_offloading_size`` (GiB for all ranks together, vLLM's native KV
        offloading), refused when it is not a size this host can give (every rank's share
        counts against its available memory)."""
        ranks = self.tensor_parallel_size * self.pipeline_parallel_size
        name, size = "swap_space", self.swap_space
        if self.kv_offloading_size is not None:
            if self.swap_space:
                raise ValueError(
                    "swap_space and kv_offloading_size both size the host KV tier (swap_space "
                    "per rank, kv_offloading_size for all ranks together); set one of them."
                )
            name, size = "kv_offloading_size", self.kv_offloading_size
        if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size):
            raise ValueError(f"{name} must be a number of GiB, got {size!r}.")
        if size < 0:
            raise ValueError(f"{name} must be >= 0 GiB, got {size}.")
        if size == 0:
            return 0
        if not caching:
            raise ValueError(
                f"{name}={size} keeps prefix-cache blocks in host memory; it needs prefix "
                f"caching (drop --no-enable-prefix-caching, or leave {name} unset)."
            )
        if name == "swap_space":
            per_rank, what = int(size * GiB), f"swap_space={size} GiB x {ranks} rank(s)"
        else:
            per_rank, what = int(size * GiB) // ranks, f"kv_offloading_size={size} GiB"
        check_host_memory(per_rank * ranks, what)
        return per_rank

    def _scheduler_config(
        self, device: str, max_model_len: int, usage: UsageContext
    ) -> SchedulerConfig:
        chunked = True if self.enable_chunked_prefill is None else self.enable_chunked_prefill
        default_budget, default_seqs = batch_defaults(device, usage)
        max_num_seqs = self.max_num_seqs or default_seqs
        budget = parse_token_count(self.max_num_batched_tokens)
        if budget is None:
            budget = default_budget if chunked else max(max_model_len, default_budget)
            # A default never exceeds what the sequences could use, nor stops one step from
            # holding a token of each.
            budget = max(min(max_num_seqs * max_model_len, budget), max_num_seqs)
        elif not chunked and budget < max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({budget}) is smaller than max_model_len "
                f"({max_model_len}) with chunked prefill disabled, so longer prompts could never "
                "be scheduled. Increase max_num_batched_tokens, decrease max_model_len, or "
                "enable chunked prefill."
            )
        if self.max_num_seqs is None:
            max_num_seqs = min(max_num_seqs, budget)  # a small budget implies fewer sequences
        mode = self.preemption_mode or "recompute"
        if mode == "swap" and not (self.swap_space or self.kv_offloading_size):
            raise ValueError(
                "preemption_mode='swap' swaps preempted requests to host memory; it needs "
                "swap_space > 0 (e.g. --swap-space 4) or kv_offloading_size > 0."
            )
        return SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=budget,
            enable_chunked_prefill=chunked,
            policy=self.scheduling_policy,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            # On the CPU the forward pass runs on the host thread: nothing to overlap.
            async_scheduling=(
                device == "cuda" if self.async_scheduling is None else self.async_scheduling
            ),
            preemption_mode=mode,
            step_time_target=self._step_time_target(usage, chunked),
        )

    def _step_time_target(self, usage: UsageContext, chunked: bool) -> float:
        """The server's clients wait for each other's steps; an offline batch wants its
        throughput, which chunks as large as the budget give. Without chunked prefill a
        prompt is computed whole: there are no chunks to size (SchedulerConfig refuses a
        target given with it)."""
        if self.step_time_target is not None:
            return self.step_time_target
        serving = usage in (UsageContext.OPENAI_API_SERVER, UsageContext.API_SERVER)
        return _SERVER_STEP_TIME_TARGET if serving and chunked else 0.0

    # -- interop -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


def check_host_memory(
    num_bytes: int, what: str, advice: str = "Decrease it.", warn: bool = True
) -> None:
    """Refuse a host allocation larger than the memory available now (MemAvailable); with
    ``warn``, warn above 40% of the total, as vLLM does for its swap space."""
    total, available = _host_memory()
    if num_bytes > available:
        raise ValueError(
            f"{what} needs {num_bytes / GiB:.3g} GiB of host memory, but only "
            f"{available / GiB:.3g} GiB of {total / GiB:.3g} GiB is available. {advice}"
        )
    if warn and num_bytes > 0.4 * total:
        logger.warning(
            "%s takes %.3g GiB, over 40%% of this host's %.3g GiB of memory.",
            what, num_bytes / GiB, total / GiB,
        )  # fmt: skip


# A container's memory limit (cgroup v2): /proc/meminfo tells the whole host's.
CGROUP_MEMORY = Path("/sys/fs/cgroup")


def _host_memory() -> tuple[int, int]:
    """(total, available) bytes of host memory, within this process's cgroup limit where
    it has one (a container started with ``--memory``)."""
    total, available = _machine_memory()
    try:
        limit = (CGROUP_MEMORY / "memory.max").read_text().strip()
        if limit != "max":
            used = int((CGROUP_MEMORY / "memory.current").read_text())
            # Inactive page cache counts as used but is given back on demand.
            stat = (CGROUP_MEMORY / "memory.stat").read_text().split()
            used -= int(stat[stat.index("inactive_file") + 1]) if "inactive_file" in stat else 0
            total = min(total, int(limit))
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass  # no cgroup v2 memory controller here: the machine's figures
    return total, available


def _machine_memory() -> tuple[int, int]:
    """(total, available) bytes of the machine's memory: /proc/meminfo, else sysconf."""
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
        return int(fields["MemTotal"]) * 1024, int(fields["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, available


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}.")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device='cuda' was asked for, but torch {torch.__version__} sees no CUDA device "
            "(a CPU build of torch, or no GPU on this machine). Use --device cpu, or leave "
            "--device out to pick what is there."
        )
    return device


def _cpu_binding(ranks: int, backend: str) -> tuple[frozenset[int], ...] | None:
    from pagedllm import envs
    from pagedllm.cpu_platform import available_cpus, parse_cpu_binding

    binding = parse_cpu_binding(envs.cpu_threads_bind(), ranks, available_cpus())
    if binding is not None and backend == "ray":
        raise ValueError(
            "VLLM_CPU_OMP_THREADS_BIND lists this machine's CPUs, but the ray backend places "
            "ranks on any node: leave it unset (or auto) with ray."
        )
    return binding


def resolve_cpu_threads(
    requested: int | None, ranks: int, binding: tuple[frozenset[int], ...] | None = None
) -> int | None:
    """Each rank's intra-op threads on the CPU: ``requested`` (else PAGEDLLM_CPU_NUM_THREADS),
    checked against the CPUs this process may use (and each rank's bound CPUs); by default
    the physical cores among them (more threads than cores wait on each other at every
    barrier). None: bound ranks take one thread per CPU of theirs, and several unbound ranks
    split their own machine's cores (they may be on other nodes)."""
    from pagedllm import envs
    from pagedllm.cpu_platform import available_cpus, physical_cores

    cpus = available_cpus()
    if requested is None:
        requested = envs.cpu_num_threads()
    if requested is None:
        return physical_cores(cpus) if ranks == 1 and binding is None else None
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"cpu_threads must be a whole number >= 1, got {requested!r}.")
    if binding is not None and requested > min(len(b) for b in binding):
        raise ValueError(
            f"cpu_threads={requested} is more than the {min(len(b) for b in binding)} CPUs "
            "VLLM_CPU_OMP_THREADS_BIND gives a rank: threads beyond them only contend."
        )
    if requested > len(cpus):
        raise ValueError(
            f"cpu_threads={requested} is more than the {len(cpus)} CPUs this process may run "
            f"on ({_cpu_list(cpus)}): threads beyond them only contend. Use at most "
            f"{len(cpus)}, or leave it unset for the physical cores."
        )
    return requested


def _cpu_list(cpus: set[int]) -> str:
    listed = ",".join(str(c) for c in sorted(cpus)[:16])
    return listed + ("..." if len(cpus) > 16 else "")


def gguf_blocks_wanted(
    files: Any, load_format: str, quantized: bool, device: str, one_rank: bool
) -> bool:
    """Whether a GGUF checkpoint's quantized tensors are to be computed on as stored: a GGUF
    file (not dummy weights), no ``--quantization``, on the CPU, on one rank, and
    PAGEDLLM_CPU_GGUF_KERNELS not 0. Whether the kernels build is known only where the model
    is built (``gguf_blocks.keeps_blocks``); ``EngineArgs._gguf_blocks_dtype`` reads it too."""
    from pagedllm import envs

    return (
        files.is_gguf and load_format != "dummy" and not quantized and device == "cpu"
        and one_rank and envs.cpu_gguf_kernels()
    )  # fmt: skip


def resolve_dtype(dtype: str, hf_config: Any, device: str) -> str:
    """auto: on the CPU by its features (``cpu_platform.default_cpu_dtype``, logged with the
    reason); on GPU the checkpoint's half type, bfloat16 for float32 ones."""
    name = _DTYPE_ALIASES.get(str(dtype).replace("torch.", ""))
    if name is None:
        raise ValueError(f"dtype must be one of {sorted(_DTYPE_ALIASES)}, got {dtype!r}.")
    if name != "auto":
        return name
    if device == "cpu":
        return _auto_cpu_dtype()
    text = getattr(hf_config, "text_config", None) or hf_config
    checkpoint = str(getattr(text, "dtype", None) or getattr(text, "torch_dtype", None) or "")
    checkpoint = checkpoint.replace("torch.", "")
    return checkpoint if checkpoint in ("float16", "bfloat16") else "bfloat16"


# float16 is kept only if its batched product is at most this much slower than float32's.
# Measured where native (AVX512-FP16, one thread, best of 20): 1.3-1.6x on a 2-core host at
# load 4-5 (best of 10 once read 2.1x); torch's widening fallback makes batched decode 5x
# slower and more.
_FLOAT16_SLOWDOWN_LIMIT = 3.0


def _auto_cpu_dtype() -> str:
    """PAGEDLLM_CPU_DTYPE where set, else the CPU dtype table's row for this CPU (logged with
    its reason: the choice changes speed and, slightly, outputs); a float16 row only once
    its batched product is timed not much slower than float32's here."""
    from pagedllm import envs
    from pagedllm.cpu_platform import cpu_flags, default_cpu_dtype, float16_batched_slowdown

    pinned = envs.cpu_dtype()
    if pinned != "auto":
        logger.info("dtype auto on the CPU: %s, as PAGEDLLM_CPU_DTYPE says", pinned)
        return pinned
    choice = default_cpu_dtype(cpu_flags())
    if choice.dtype == "float16":
        slowdown = float16_batched_slowdown()
        if slowdown > _FLOAT16_SLOWDOWN_LIMIT:
            logger.info(
                "dtype auto on the CPU: float32, since a 32-row float16 product took %.1fx the "
                "float32 one here (the table expected native float16)", slowdown,
            )  # fmt: skip
            return "float32"
        logger.info(
            "dtype auto on the CPU: float16, since %s; a 32-row float16 product took %.2fx "
            "the float32 one here", choice.reason, slowdown,
        )  # fmt: skip
        return "float16"
    logger.info("dtype auto on the CPU: %s, since %s", choice.dtype, choice.reason)
    return choice.dtype


def parse_size(value: int | str | None) -> int | None:
    """Bytes from an int or a string, read as vLLM reads them: an upper-case unit (or one
    followed by "iB") counts in powers of 1024, a lower-case one in powers of 1000 ('8G' is
    8 GiB, '8g' 8 * 10**9; '512M', '2GiB', '1.5G')."""
    if value is None or isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)([iI]?[bB])?\s*", str(value))
    if not match or match.group(1).count(".") > 1:
        raise ValueError(
            f"Cannot read a size from {value!r}; write e.g. 1073741824, '512M' or '2G'."
        )
    unit, suffix = match.group(2), (match.group(3) or "").lower()
    binary = unit.isupper() or suffix == "ib"
    scale = (1024 if binary else 1000) ** "_kmgt".index(unit.lower() or "_")
    return int(float(match.group(1)) * scale)


def parse_token_count(value: int | str | None) -> int | None:
    """Token counts such as 4096, '8k' or '32K' (k = 1000, K = 1024), as vLLM reads them."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.]+)([kKmM]?)", text)
    if not match:
        raise ValueError(f"Cannot read a token count from {value!r}; write e.g. 4096 or '8k'.")
    unit = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}[match.group(2)]
    return int(float(match.group(1)) * unit)


def _load_hf_config(files: ModelFiles, trust_remote_code: bool) -> Any:
    """The model's transformers config, loaded without transformers' model registry where
    the version allows (``unused_modules.without_transformers_models``: some versions import
    every model class's stack, torch._dynamo and scikit-learn among it, to write a config
    class's docstring; ~2.9 s of the engine process's start on the H200 image); a version
    that needs it loads it on the second try."""
    from transformers import AutoConfig

    folder = str(files.config_dir)
    return without_transformers_models(
        lambda: AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    )


def _architecture(hf_config: Any) -> str:
    from pagedllm.model.registry import check_architecture

    archs = getattr(hf_config, "architectures", None) or []
    return check_architecture(archs, getattr(hf_config, "model_type", None))


def _max_model_len(requested: int | str | None, hf_config: Any) -> int:
    """The model's full context (max_position_embeddings): a sliding-window model attends
    within its window at every length (``DecoderSpec.sliding_windows``), as vLLM serves it."""
    text = getattr(hf_config, "text_config", None) or hf_config
    derived: int = getattr(text, "max_position_embeddings", None) or 2048
    if _is_auto_length(requested):
        return derived  # fitted to the cache afterwards (_fit_to_cache)
    value = parse_token_count(requested)
    if value is None:
        return derived
    if value > derived:
        raise ValueError(
            f"max_model_len={value} is larger than the model's maximum length of {derived} "
            f"(max_position_embeddings). Use max_model_len <= {derived}."
        )
    if value < 1:
        raise ValueError(f"max_model_len must be at least 1, got {value}.")
    return value


def _is_auto_length(value: int | str | None) -> bool:
    """vLLM's max_model_len -1 or 'auto': the model's maximum, fitted to the memory."""
    return value == -1 or (isinstance(value, str) and value.strip().lower() in ("-1", "auto"))


def _fit_to_cache(model_config: ModelConfig, cache: CacheConfig) -> ModelConfig:
    """max_model_len auto: the longest length one request can hold in the KV cache, up to
    the model's maximum, as vLLM fits it. A GPU cache sized by gpu_memory_utilization is
    measured only after the weights load; then the model's maximum stays, and start-up
    fails naming the largest length that fits if the cache cannot hold it."""
    full = model_config.max_model_len
    if cache.kv_cache_memory_bytes is None:
        logger.info(
            "max_model_len auto: the model's %d tokens; the KV cache is measured after "
            "loading (start-up names the largest length that fits if it holds less).", full,
        )  # fmt: skip
        return model_config
    block_bytes = model_config.kv_bytes_per_token(cache.cache_dtype) * cache.block_size
    fits = cache.kv_cache_memory_bytes // block_bytes * cache.block_size
    if fits < 1:
        raise ValueError(
            f"max_model_len auto: kv_cache_memory_bytes={cache.kv_cache_memory_bytes} holds "
            f"no block of {cache.block_size} tokens; give the KV cache more memory."
        )
    if fits >= full:
        return model_config
    logger.info("max_model_len auto: %d tokens (the model's %d) fit in the KV cache.", fits, full)
    return dataclasses.replace(model_config, max_model_len=fits)
