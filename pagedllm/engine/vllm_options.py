"""vLLM 0.26's engine options beyond pagedllm's own: each is known by name, so a command line
or an ``LLM(...)`` call written for vLLM starts or fails with a sentence naming the option.

``VllmEngineOptions`` is a base of ``EngineArgs``. Each field is one option, with vLLM's
name and default; its docstring is both the flag's help text and, when a value is refused,
the reason given. The field's ``accepts`` metadata lists the values that start: vLLM's
default, plus any value that has no effect here by design (disabling a feature pagedllm
does not have). Any other value is refused by ``refusals`` (data, not a function per
option). Fields without ``accepts`` are implemented (``optimization_level``, the CUDA graph
sizes) and read by ``EngineArgs``.

Nothing here imports pagedllm.config: it is a base class of EngineArgs.
"""

# only() and any_value() return dataclasses.field(...), which RUF009 cannot see through.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ANY = "any"  # accepts=ANY: every value starts (the option has nothing to act on here)


def only(default: Any, *also: Any, short: str | None = None) -> Any:
    """A field accepted at ``default`` (and ``also``), refused at any other value."""
    return _field(default, (default, *also), short)


def any_value(default: Any, short: str | None = None) -> Any:
    """A field whose every value starts: what it would change does not exist here."""
    return _field(default, ANY, short)


def _field(default: Any, accepts: Any, short: str | None) -> Any:
    metadata = {"accepts": accepts, "short": short}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def refusals(options: Any) -> list[str]:
    """One sentence per option of ``options`` (a dataclass instance) set to a value that
    its ``accepts`` metadata does not list, naming the flag and saying why."""
    from pagedllm.entrypoints.cli.engine_flags import field_docs

    sentences = []
    for f in dataclasses.fields(options):
        accepts = f.metadata.get("accepts")
        value = getattr(options, f.name)
        if accepts is None or accepts == ANY or _accepted(value, accepts):
            continue
        # Read only for a refusal: parsing the classes' source costs ~40 ms, on every
        # engine start's path otherwise (issue 18's W4).
        reason = field_docs(type(options))[f.name]
        first = reason.split(" ", 1)[0]
        if not (len(first) > 1 and first.isupper()):  # "Expert ..." reads on; "ASGI" stays
            reason = reason[:1].lower() + reason[1:]
        sentences.append(f"{_spelled(f.name, value)}: {reason} Remove the flag.")
    return sentences


def _accepted(value: Any, accepts: tuple) -> bool:
    # An empty list or dict is vLLM's "nothing" as much as None is.
    if value in ({}, []) and any(ok in (None, {}, []) for ok in accepts):
        return True
    # True == 1 in Python; a flag's bool is never its int.
    return any(value == ok and isinstance(value, bool) == isinstance(ok, bool) for ok in accepts)


def _spelled(name: str, value: Any) -> str:
    """The flag as a user would have typed it: --flag, --no-flag, or --flag VALUE."""
    if value is True:
        return flag_name(name)
    if value is False:
        return "--no-" + flag_name(name)[2:]
    return f"{flag_name(name)} {value!r}"


@dataclass(kw_only=True)
class VllmEngineOptions:
    """vLLM 0.26's engine options that pagedllm knows by name (see the module docstring)."""

    # -- implemented -----------------------------------------------------------------------
    optimization_level: int | str = 2
    """vLLM's -O level (-O0 .. -O3, also -O 3 and --optimization-level 3): 0 runs without
    CUDA graphs (as --enforce-eager); 1, 2 and 3 capture them. pagedllm has no torch.compile
    stages, so levels 1 to 3 run alike."""
    cudagraph_capture_sizes: list[int] | None = None
    """Batch sizes (requests) to capture decode CUDA graphs for; larger batches run
    eagerly (default: 1, 2, 4, 8, 16, then steps up to max-num-seqs)."""
    max_cudagraph_capture_size: int | None = None
    """The largest batch size captured in a decode CUDA graph (default: max-num-seqs)."""
    prefix_caching_hash_algo: str = only("sha256")
    """How prefix-cache blocks are hashed; pagedllm hashes with sha256 only."""
    logprobs_mode: str = only("raw_logprobs")
    """What logprobs report; pagedllm reports raw_logprobs (the model's own distribution,
    before temperature and processors) only."""
    performance_mode: str = only("balanced")
    """vLLM's tuning preset (interactivity, throughput); pagedllm has one tuning, balanced."""

    # -- model and loading -----------------------------------------------------------------
    hf_config_path: str | None = only(None)
    """A config.json from a path other than the model's; pagedllm reads the model's own."""
    quantization_config: dict | None = only(None)
    """Options for the quantization method; pagedllm's methods take none."""
    allow_deprecated_quantization: bool = any_value(False)
    """Permission to load deprecated quantization methods; pagedllm has none, so there is
    nothing to permit."""
    config_format: str = only("auto", "hf")
    """The model config's format; pagedllm reads Hugging Face configs (auto or hf) only."""
    model_class_overrides: dict | None = only(None)
    """Replacement model classes; pagedllm builds its own architectures only."""
    model_impl: str = only("auto", "vllm")
    """Which implementation runs the model; pagedllm runs its own (auto), never the
    transformers backend."""
    override_attention_dtype: str | None = only(None)
    """A dtype for attention other than the model's; pagedllm attends in the model dtype."""
    io_processor_plugin: str | None = only(None)
    """An input/output processor plugin; pagedllm loads no plugins."""
    renderer_num_workers: int = only(1)
    """Threads that render prompts; pagedllm renders chat templates in its own sandbox
    workers and has no such pool."""
    safetensors_load_strategy: str | None = only(None)
    """How safetensors files are read (lazy, eager, prefetch, torchao); pagedllm reads them
    one way."""
    safetensors_prefetch_num_threads: int = only(8)
    """Threads for the prefetch load strategy, which pagedllm does not have."""
    safetensors_prefetch_block_size: int = only(16777216)
    """Block size of the prefetch load strategy, which pagedllm does not have."""
    model_loader_extra_config: dict | None = only(None)
    """Extra options of a model loader; pagedllm's loader takes none."""
    ignore_patterns: list[str] = only(["original/**/*"])
    """Weight files to skip; pagedllm loads the model directory's top-level weight files,
    which is what vLLM's default pattern leaves."""
    use_tqdm_on_load: bool = any_value(True)
    """A progress bar while weights load; cosmetic."""
    pt_load_map_location: str = only("cpu")
    """Where .pt checkpoints are mapped; pagedllm loads safetensors and GGUF only."""
    attention_backend: str | None = only(None)
    """The attention kernels; pagedllm chooses its own (Triton on CUDA, torch elsewhere;
    PAGEDLLM_ATTENTION_BACKEND=torch forces the reference path)."""
    attention_config: dict | None = only(None, short="-ac")
    """Attention backend options; pagedllm's attention takes none."""
    disable_sliding_window: bool = only(False)
    """Capping the context at the sliding window; pagedllm always serves a sliding-window
    model's full context with windowed attention."""
    disable_cascade_attn: bool = any_value(True)
    """Cascade attention for shared prefixes; pagedllm has none, on or off."""
    enable_prompt_embeds: bool = only(False)
    """Prompts given as embeddings; pagedllm takes text or token ids."""
    enable_return_routed_experts: bool = only(False)
    """Returning mixture-of-experts routing; pagedllm serves no MoE models."""
    use_fp64_gumbel: bool = only(False)
    """Sampling noise in float64; pagedllm samples in float32."""
    enable_cumem_allocator: bool = only(False)
    """The cumem memory allocator (for sleep mode); pagedllm uses torch's allocator."""
    reasoning_parser_plugin: str = only("")
    """A reasoning parser loaded from a file; pagedllm uses its built-in parsers only."""
    reasoning_config: dict | None = only(None)
    """Reasoning budget options; not supported by pagedllm."""

    # -- mamba (state-space) models --------------------------------------------------------
    mamba_backend: str = only("triton")
    """Kernels for Mamba layers; pagedllm serves no state-space models."""
    enable_mamba_cache_stochastic_rounding: bool = only(False)
    """Stochastic rounding of Mamba state; pagedllm serves no state-space models."""
    mamba_cache_philox_rounds: int = only(0)
    """Rounds of that stochastic rounding; pagedllm serves no state-space models."""
    mamba_cache_dtype: str = only("auto")
    """Mamba cache dtype; pagedllm serves no state-space models."""
    mamba_ssm_cache_dtype: str = only("auto")
    """Mamba SSM state dtype; pagedllm serves no state-space models."""
    mamba_block_size: int | None = only(None)
    """Mamba cache block size; pagedllm serves no state-space models."""
    mamba_cache_mode: str = only("none")
    """Prefix caching of Mamba state; pagedllm serves no state-space models."""

    # -- distributed -----------------------------------------------------------------------
    master_addr: str = only("127.0.0.1")
    """Address of the first node of a multi-node run; pagedllm runs on one device."""
    master_port: int = only(29501)
    """Port of the first node of a multi-node run; pagedllm runs on one device."""
    nnodes: int = only(1, short="-n")
    """Nodes of a multi-node run; pagedllm runs on one device."""
    node_rank: int = only(0, short="-r")
    """This node's rank in a multi-node run; pagedllm runs on one device."""
    distributed_timeout_seconds: int | None = only(None)
    """Timeout of collective operations; pagedllm runs on one device and has none."""
    cpu_distributed_timeout_seconds: int | None = only(None)
    """Timeout of CPU collective operations; pagedllm runs on one device and has none."""
    numa_bind: bool = only(False)
    """Binding workers to NUMA nodes; not supported by pagedllm."""
    numa_bind_nodes: list[int] | None = only(None)
    """NUMA nodes to bind workers to; not supported by pagedllm."""
    numa_bind_cpus: list[str] | None = only(None)
    """CPUs to bind workers to; not supported by pagedllm."""
    device_ids: str | None = only(None)
    """GPUs to use by id; pagedllm uses the first visible device (choose it with
    CUDA_VISIBLE_DEVICES)."""
    decode_context_parallel_size: int = only(1, short="-dcp")
    """Decode context parallelism over GPUs; pagedllm runs on one device."""
    dcp_comm_backend: str = only("ag_rs")
    """Communication of decode context parallelism, which pagedllm does not have."""
    dcp_kv_cache_interleave_size: int = only(1)
    """KV interleaving of decode context parallelism, which pagedllm does not have."""
    cp_kv_cache_interleave_size: int = only(1)
    """KV interleaving of context parallelism, which pagedllm does not have."""
    prefill_context_parallel_size: int = only(1, short="-pcp")
    """Prefill context parallelism over GPUs; pagedllm runs on one device."""
    data_parallel_rank: int | None = only(None, short="-dpn")
    """This engine's data-parallel rank; pagedllm runs one engine."""
    data_parallel_start_rank: int | None = only(None, short="-dpr")
    """First data-parallel rank on this node; pagedllm runs one engine."""
    data_parallel_size_local: int | None = only(None, short="-dpl")
    """Data-parallel engines on this node; pagedllm runs one engine."""
    data_parallel_address: str | None = only(None, short="-dpa")
    """Address of the data-parallel cluster; pagedllm runs one engine."""
    data_parallel_rpc_port: int | None = only(None, short="-dpp")
    """Port of the data-parallel cluster; pagedllm runs one engine."""
    data_parallel_backend: str = only("mp", short="-dpb")
    """How data-parallel engines are launched; pagedllm runs one engine."""
    data_parallel_hybrid_lb: bool = only(False, short="-dph")
    """Hybrid data-parallel load balancing; pagedllm runs one engine."""
    data_parallel_external_lb: bool = only(False, short="-dpe")
    """External data-parallel load balancing; pagedllm runs one engine."""
    data_parallel_multi_port_external_lb: bool = only(False, short="-dpm")
    """Per-rank ports for external load balancing; pagedllm runs one engine."""
    disable_nccl_for_dp_synchronization: bool | None = any_value(None)
    """How data-parallel engines synchronise; with one engine there is nothing to
    synchronise."""
    prefill_schedule_interval: int = only(1)
    """Admitting prefills every N steps to balance data-parallel ranks; pagedllm runs one
    engine."""
    aggregate_engine_logging: bool = any_value(False)
    """Statistics summed over data-parallel engines; pagedllm runs one, so they are the
    same."""
    max_parallel_loading_workers: int | None = only(None)
    """Workers loading weights in batches; pagedllm loads with one process."""
    ray_workers_use_nsight: bool = only(False)
    """Profiling Ray workers with Nsight; pagedllm does not use Ray."""
    worker_cls: str = only("auto")
    """A custom worker class; pagedllm runs its own worker only."""
    worker_extension_cls: str = only("")
    """A worker extension class; pagedllm loads no extensions."""

    # -- mixture of experts ----------------------------------------------------------------
    enable_expert_parallel: bool = only(False, short="-ep")
    """Expert parallelism for mixture-of-experts models; pagedllm serves no MoE models and
    runs on one device."""
    enable_ep_weight_filter: bool = only(False)
    """Loading only this rank's experts; pagedllm has no expert parallelism."""
    all2all_backend: str = only("allgather_reducescatter")
    """All-to-all kernels of expert parallelism, which pagedllm does not have."""
    enable_dbo: bool = only(False)
    """Dual batch overlap of expert parallelism, which pagedllm does not have."""
    ubatch_size: int = only(0)
    """Micro-batches of dual batch overlap, which pagedllm does not have."""
    enable_elastic_ep: bool = only(False)
    """Elastic expert parallelism, which pagedllm does not have."""
    dbo_decode_token_threshold: int = only(32)
    """A dual batch overlap threshold; pagedllm has no dual batch overlap."""
    dbo_prefill_token_threshold: int = only(512)
    """A dual batch overlap threshold; pagedllm has no dual batch overlap."""
    enable_eplb: bool = only(False)
    """Expert load balancing; pagedllm has no expert parallelism."""
    eplb_config: dict | None = only(None)
    """Expert load balancing options; pagedllm has no expert parallelism."""
    expert_placement_strategy: str = only("linear")
    """How experts are placed on GPUs; pagedllm has no expert parallelism."""
    moe_backend: str = only("auto")
    """Mixture-of-experts kernels; pagedllm serves no MoE models."""
    enable_bf16x3_router_gemm: bool = only(False)
    """A MoE router GEMM variant; pagedllm serves no MoE models."""

    # -- KV cache and memory ---------------------------------------------------------------
    kv_cache_dtype_skip_layers: list[str] = only([])
    """Layers kept out of a quantized KV cache; pagedllm quantizes every layer's cache
    alike."""
    kv_sharing_fast_prefill: bool = only(False)
    """A prefill shortcut for models that share KV between layers; pagedllm has none."""
    prefix_match_unit: int | None = only(None)
    """Prefix-cache hits inside a block; pagedllm matches whole blocks (--block-size)."""
    kv_offloading_size: float | None = None
    """GiB of host memory for KV blocks the GPU cache evicts, all ranks together (each rank
    gets its share): vLLM's native KV offloading, served by pagedllm's host tier (the same as
    --swap-space, which is per rank; set one of them)."""
    kv_offloading_backend: str = only("native")
    """The KV offloading backend: native (pagedllm's host tier, sized by --kv-offloading-size);
    pagedllm has no LMCache connector."""
    offload_backend: str = only("auto")
    """How weights are offloaded; pagedllm keeps weights on the device."""
    cpu_offload_params: list[str] = only([])
    """Weights to offload to CPU memory; pagedllm keeps weights on the device."""
    offload_group_size: int = only(0)
    """Layer groups for weight offloading; pagedllm keeps weights on the device."""
    offload_num_in_group: int = only(1)
    """Layers offloaded per group; pagedllm keeps weights on the device."""
    offload_prefetch_step: int = only(1)
    """Prefetching of offloaded weights; pagedllm keeps weights on the device."""
    offload_params: list[str] = only([])
    """Weights to offload; pagedllm keeps weights on the device."""
    disable_hybrid_kv_cache_manager: bool | None = only(None, True)
    """Sizing the cache per attention type (full vs sliding window); pagedllm gives every
    layer the same cache, which is what disabling it asks for."""
    kv_events_config: dict | None = only(None)
    """Publishing KV cache events; not supported by pagedllm."""
    ec_transfer_config: dict | None = only(None)
    """Transferring encoder caches between instances; not supported by pagedllm."""
    weight_transfer_config: dict | None = only(None)
    """Receiving weights during RL training; not supported by pagedllm."""

    # -- multimodal ------------------------------------------------------------------------
    allowed_media_domains: list[str] | None = any_value(None)
    """Domains media may be fetched from; pagedllm serves text models and fetches no media,
    so there is nothing to restrict."""
    language_model_only: bool = any_value(False)
    """Serving a multimodal model's text part only; pagedllm serves text models, which is
    what it asks for."""
    enable_mm_embeds: bool = only(False)
    """Multimodal inputs as embeddings; pagedllm serves text models."""
    media_io_kwargs: dict | None = only(None)
    """Media loading options; pagedllm serves text models."""
    mm_processor_cache_gb: float = only(4.0)
    """The multimodal processor cache; pagedllm serves text models."""
    mm_processor_cache_type: str = only("lru")
    """The multimodal processor cache's kind; pagedllm serves text models."""
    mm_shm_cache_max_object_size_mb: int = only(128)
    """The shared-memory multimodal cache; pagedllm serves text models."""
    mm_encoder_only: bool = only(False)
    """Running the multimodal encoder alone; pagedllm serves text models."""
    mm_encoder_tp_mode: str = only("weights")
    """Tensor parallelism of a multimodal encoder; pagedllm serves text models."""
    mm_encoder_attn_backend: str | None = only(None)
    """A multimodal encoder's attention kernels; pagedllm serves text models."""
    mm_encoder_attn_dtype: str | None = only(None)
    """A multimodal encoder's attention dtype; pagedllm serves text models."""
    mm_encoder_fp8_scale_path: str | None = only(None)
    """FP8 scales of a multimodal encoder; pagedllm serves text models."""
    mm_encoder_fp8_scale_save_path: str | None = only(None)
    """Saving FP8 scales of a multimodal encoder; pagedllm serves text models."""
    mm_encoder_fp8_scale_save_margin: float = only(1.5)
    """Margin of saved encoder FP8 scales; pagedllm serves text models."""
    interleave_mm_strings: bool = only(False)
    """Interleaving media with text in prompts; pagedllm serves text models."""
    skip_mm_profiling: bool = any_value(False)
    """Skipping the multimodal memory profile; pagedllm serves text models and has none."""
    disable_chunked_mm_input: bool = any_value(False)
    """Keeping multimodal items in one chunk; pagedllm serves text models."""
    video_pruning_rate: float | None = only(None)
    """Pruning of video tokens; pagedllm serves text models."""
    mm_tensor_ipc: str = only("direct_rpc")
    """How media tensors travel between processes; pagedllm serves text models."""
    mm_ipc_gpu_memory_gb: float = only(0)
    """GPU memory for media tensors between processes; pagedllm serves text models."""

    # -- LoRA ------------------------------------------------------------------------------
    lora_dtype: str = only("auto")
    """LoRA adapter dtype; LoRA adapters are not supported by pagedllm yet."""
    enable_tower_connector_lora: bool = only(False)
    """LoRA on multimodal towers; LoRA adapters are not supported by pagedllm yet."""
    fully_sharded_loras: bool = only(False)
    """Sharding LoRA computation; LoRA adapters are not supported by pagedllm yet."""
    lora_target_modules: list[str] | None = only(None)
    """Modules LoRA applies to; LoRA adapters are not supported by pagedllm yet."""
    default_mm_loras: dict | None = only(None)
    """LoRA adapters per modality; LoRA adapters are not supported by pagedllm yet."""
    specialize_active_lora: bool = only(False)
    """Kernels specialized to the active LoRA; LoRA adapters are not supported by pagedllm
    yet."""
    enable_mixed_moe_lora_format: bool = only(False)
    """MoE LoRA formats; LoRA adapters are not supported by pagedllm yet."""
    enable_moe_shared_loras: bool = only(False)
    """Shared MoE LoRA adapters; LoRA adapters are not supported by pagedllm yet."""

    # -- observability ---------------------------------------------------------------------
    show_hidden_metrics_for_version: str | None = only(None)
    """Metrics vLLM has deprecated; pagedllm exports its current metrics only."""
    otlp_traces_endpoint: str | None = only(None)
    """OpenTelemetry trace export; not supported by pagedllm."""
    collect_detailed_traces: list[str] | None = only(None)
    """Detailed OpenTelemetry traces; not supported by pagedllm."""
    kv_cache_metrics: bool = only(False)
    """Sampled KV cache residency metrics; not supported by pagedllm."""
    kv_cache_metrics_sample: float = only(0.01)
    """The sampling rate of KV cache residency metrics, which pagedllm does not have."""
    cudagraph_metrics: bool = only(False)
    """CUDA graph usage metrics; not supported by pagedllm."""
    enable_layerwise_nvtx_tracing: bool = only(False)
    """NVTX ranges per layer; not supported by pagedllm."""
    enable_mfu_metrics: bool = only(False)
    """Model FLOPs utilization metrics; not supported by pagedllm."""
    enable_logging_iteration_details: bool = only(False)
    """A log line per engine step; not supported by pagedllm."""
    jit_monitor_mode: str = only("warn")
    """What a JIT compile after warm-up does; pagedllm does not monitor compiles."""
    jit_monitor_verbose: bool = only(False)
    """Details of JIT compiles after warm-up; pagedllm does not monitor compiles."""
    profiler_config: dict | None = only(None)
    """The torch profiler behind /start_profile; not supported by pagedllm."""
    fail_on_environ_validation: bool = only(False)
    """Failing on unknown VLLM_* environment variables; pagedllm does not read them."""

    # -- scheduling ------------------------------------------------------------------------
    max_num_scheduled_tokens: int | None = only(None)
    """Tokens scheduled a step when it differs from max-num-batched-tokens (speculative
    decoding); pagedllm schedules max-num-batched-tokens."""
    max_num_partial_prefills: int = only(1)
    """Prompts prefilled in parts at the same time; not configurable in pagedllm."""
    max_long_partial_prefills: int = only(1)
    """Long prompts prefilled in parts at the same time; not configurable in pagedllm."""
    scheduler_cls: str | None = only(None)
    """A custom scheduler class; pagedllm runs its own scheduler only."""
    scheduler_reserve_full_isl: bool = only(True)
    """Admitting a prompt only if all of it fits the cache; not configurable in pagedllm."""
    watermark: float = only(0.0)
    """Cache blocks kept free when admitting requests; not supported by pagedllm."""
    stream_interval: int = only(1)
    """Tokens gathered before a stream sends them; pagedllm streams each step's tokens."""

    # -- kernels, compilation, speculative decoding ----------------------------------------
    ir_op_priority: dict | None = only(None)
    """Kernel choices per operation; pagedllm has its own kernels."""
    kernel_config: dict | None = only(None)
    """Kernel options; pagedllm has its own kernels."""
    enable_flashinfer_autotune: bool | None = only(None, False)
    """FlashInfer autotuning; pagedllm does not use FlashInfer."""
    linear_backend: str = only("auto")
    """Kernels for linear layers; pagedllm has its own kernels."""
    gdn_prefill_backend: str | None = only(None)
    """Gated DeltaNet prefill kernels; pagedllm serves no such models."""
    spec_method: str | None = only(None)
    """The speculative decoding method; no speculative decoding yet."""
    spec_model: str | None = only(None)
    """The speculative draft model; no speculative decoding yet."""
    spec_tokens: int | None = only(None)
    """Tokens proposed per speculative step; no speculative decoding yet."""
    diffusion_config: dict | None = only(None, short="-dc")
    """Diffusion model options; pagedllm serves autoregressive text models."""
    additional_config: dict | None = only(None)
    """Options for platform plugins; pagedllm loads no plugins."""


# -- CUDA graphs: --enforce-eager, -O, --compilation-config and the capture sizes -----------


@dataclass(frozen=True)
class GraphOptions:
    eager: bool  # no CUDA graphs at all
    capture_sizes: tuple[int, ...] | None  # None: the worker's own pattern
    max_capture_size: int | None


# compilation_config's cudagraph_mode values pagedllm runs: no graphs, or its own graphs
# (full graphs for decode batches and for mixed batches up to 2048 tokens), which is what
# vLLM's default FULL_AND_PIECEWISE asks for.
_CUDAGRAPH_MODES = {"NONE": True, "FULL_AND_PIECEWISE": False}
# compilation_config's mode (torch.compile): only "no compilation" is something pagedllm
# does; it never compiles, so the mode changes nothing else.
_NO_COMPILE = (None, 0, "0", "NONE", "none")


def cuda_graph_options(args: Any) -> GraphOptions:
    """Whether to capture CUDA graphs, and for which batch sizes, from ``enforce_eager``,
    ``optimization_level`` (-O), ``compilation_config`` (-cc) and the capture-size options
    of ``args`` (an EngineArgs). ValueError naming what is not supported."""
    level = _optimization_level(args.optimization_level)
    compilation = dict(args.compilation_config or {})
    if not isinstance(args.compilation_config or {}, dict):
        raise ValueError(
            f"compilation_config must be a JSON object, got {args.compilation_config!r}."
        )
    mode = compilation.pop("mode", compilation.pop("level", None))
    if mode not in _NO_COMPILE:
        raise ValueError(
            f"compilation_config mode {mode!r}: pagedllm does not use torch.compile; leave "
            "the mode unset or NONE."
        )
    graph_mode = compilation.pop("cudagraph_mode", None)
    if graph_mode is not None and str(graph_mode).upper() not in _CUDAGRAPH_MODES:
        raise ValueError(
            f"compilation_config cudagraph_mode {graph_mode!r} is not supported: pagedllm "
            f"runs {' or '.join(_CUDAGRAPH_MODES)}."
        )
    sizes = _sizes(compilation.pop("cudagraph_capture_sizes", None), args.cudagraph_capture_sizes)
    largest = compilation.pop("max_cudagraph_capture_size", None)
    largest = args.max_cudagraph_capture_size if largest is None else largest
    if compilation:
        raise ValueError(
            f"compilation_config {', '.join(sorted(compilation))}: not supported, pagedllm "
            "does not use torch.compile (it knows mode, cudagraph_mode, "
            "cudagraph_capture_sizes and max_cudagraph_capture_size)."
        )
    if largest is not None and (not isinstance(largest, int) or largest < 1):
        raise ValueError(f"max_cudagraph_capture_size must be at least 1, got {largest!r}.")
    eager = (
        bool(args.enforce_eager)
        or level == 0
        or (graph_mode is not None and _CUDAGRAPH_MODES[str(graph_mode).upper()])
    )
    return GraphOptions(eager, sizes, largest)


def _optimization_level(value: Any) -> int:
    text = str(value).strip().upper().removeprefix("O")
    if text not in ("0", "1", "2", "3"):
        raise ValueError(f"optimization_level (-O) must be 0, 1, 2 or 3, got {value!r}.")
    return int(text)


def _sizes(from_json: Any, from_flag: list[int] | None) -> tuple[int, ...] | None:
    sizes = from_json if from_json is not None else from_flag
    if sizes is None:
        return None
    if not isinstance(sizes, list) or not sizes:
        raise ValueError(f"cudagraph_capture_sizes must be a list of batch sizes, got {sizes!r}.")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"cudagraph_capture_sizes must be positive integers, got {sizes!r}.")
    return tuple(sorted(set(sizes)))
