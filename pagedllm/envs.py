"""Every ``PAGEDLLM_*`` environment variable, declared once and typed.

Read them through the functions here (``envs.cache_root()``) so that a test can set a
variable after import and still see it take effect.
"""

from __future__ import annotations

import os
from pathlib import Path


def _get_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def cache_root() -> Path:
    """PAGEDLLM_CACHE_ROOT: where converted tokenizers/configs (from GGUF files) are kept."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pagedllm"
    return Path(os.environ.get("PAGEDLLM_CACHE_ROOT", str(default)))


def logging_level() -> str:
    """PAGEDLLM_LOGGING_LEVEL: level of the ``pagedllm`` logger (default INFO)."""
    return os.environ.get("PAGEDLLM_LOGGING_LEVEL", "INFO").upper()


def configure_logging() -> bool:
    """PAGEDLLM_CONFIGURE_LOGGING: set to 0 to leave logging configuration to the host app."""
    return _get_bool("PAGEDLLM_CONFIGURE_LOGGING", True)


def debug_integrity_checks() -> bool:
    """PAGEDLLM_DEBUG_INTEGRITY: check the block pool's invariants whenever the engine is idle."""
    return _get_bool("PAGEDLLM_DEBUG_INTEGRITY", False)


def freeze_gc() -> bool:
    """PAGEDLLM_FREEZE_GC: before the first engine of the process is built, move the objects
    that exist (the libraries' modules) out of the garbage collector's reach (``gc.freeze``),
    so the collections that the per-step output objects trigger do not traverse them each
    time, and raise an API server process's young-generation threshold
    (``heap.widen_young_generation``) (default on)."""
    return _get_bool("PAGEDLLM_FREEZE_GC", True)


def enable_multiprocessing() -> bool:
    """PAGEDLLM_ENABLE_MULTIPROCESSING: run the engine core in its own process (default on,
    as vLLM's VLLM_ENABLE_V1_MULTIPROCESSING); 0 keeps it in the front end's process, for
    debugging and for tests that reach into the engine."""
    return _get_bool("PAGEDLLM_ENABLE_MULTIPROCESSING", True)


def admission_forecast() -> bool:
    """PAGEDLLM_ADMISSION_FORECAST: admit a waiting request only if the running requests'
    projected KV blocks still fit (``pagedllm/core/admission.py``; default on); 0 admits
    while blocks are free and preempts when they run out, as vLLM does."""
    return _get_bool("PAGEDLLM_ADMISSION_FORECAST", True)


def log_stats_interval() -> float:
    """PAGEDLLM_LOG_STATS_INTERVAL: seconds between periodic stats log lines (default 5)."""
    return float(os.environ.get("PAGEDLLM_LOG_STATS_INTERVAL", "5"))


def cpu_num_threads() -> int | None:
    """PAGEDLLM_CPU_NUM_THREADS: torch intra-op threads on CPU when --cpu-threads is not
    given (default: the physical cores)."""
    value = os.environ.get("PAGEDLLM_CPU_NUM_THREADS")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"PAGEDLLM_CPU_NUM_THREADS must be a whole number, got {value!r}."
        ) from None


def cpu_gguf_kernels() -> bool:
    """PAGEDLLM_CPU_GGUF_KERNELS: on the CPU, compute on a GGUF file's Q4_0/Q4_1/Q8_0/Q4_K/
    Q6_K blocks as stored (default); 0 dequantizes them to the model dtype at load, as on GPU."""
    return _get_bool("PAGEDLLM_CPU_GGUF_KERNELS", True)


def cpu_threads_bind() -> str:
    """PAGEDLLM_CPU_OMP_THREADS_BIND, else vLLM's VLLM_CPU_OMP_THREADS_BIND: the CPUs each
    rank's threads run on (``cpu_platform.parse_cpu_binding``; default auto)."""
    return (
        os.environ.get("PAGEDLLM_CPU_OMP_THREADS_BIND")
        or os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
        or "auto"
    )


def cpu_dtype() -> str:
    """PAGEDLLM_CPU_DTYPE: what --dtype auto means on the CPU, for every engine started with
    this environment (a fleet pinning one dtype; the test suite's float32 references):
    auto (default: by the CPU's features, ``cpu_platform``), float32, bfloat16 or float16."""
    value = os.environ.get("PAGEDLLM_CPU_DTYPE", "auto").lower()
    if value not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(
            f"PAGEDLLM_CPU_DTYPE must be auto, float32, bfloat16 or float16, got {value!r}."
        )
    return value


def max_grammar_bytes() -> int:
    """PAGEDLLM_MAX_GRAMMAR_BYTES: the largest structured-output constraint (its JSON schema,
    regex, grammar, structural tag, or choices as a grammar), in bytes; larger ones are
    refused (default 256 KiB). Compiling a grammar against the vocabulary grows faster than
    its size: 10,000 short choices compile in 0.24 s on a 2-core CPU, 40,000 in 13 s, and two
    such requests hold both compile threads for everyone's constraints."""
    return _positive_int("PAGEDLLM_MAX_GRAMMAR_BYTES", 256 << 10)


def grammar_cache_bytes() -> int:
    """PAGEDLLM_XGRAMMAR_CACHE_MB (vLLM's VLLM_XGRAMMAR_CACHE_MB): megabytes of compiled
    grammars the engine keeps for reuse by later requests with the same constraint
    (default 512)."""
    ours = "PAGEDLLM_XGRAMMAR_CACHE_MB"
    return _positive_int(ours if os.environ.get(ours) else "VLLM_XGRAMMAR_CACHE_MB", 512) << 20


def _positive_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
    return number


def api_key() -> str | None:
    """PAGEDLLM_API_KEY, else vLLM's VLLM_API_KEY (Helm charts set it): the server's API
    key when --api-key is not given."""
    return os.environ.get("PAGEDLLM_API_KEY") or os.environ.get("VLLM_API_KEY") or None


def openai_api_key() -> str | None:
    """OPENAI_API_KEY (the openai client's variable): ``pagedllm bench serve``'s default key."""
    return os.environ.get("OPENAI_API_KEY") or None


def attention_backend() -> str:
    """PAGEDLLM_ATTENTION_BACKEND: "triton" (CUDA default) or "torch" (the portable reference)."""
    value = os.environ.get("PAGEDLLM_ATTENTION_BACKEND", "auto").lower()
    if value not in ("auto", "triton", "torch"):
        raise ValueError(
            f"PAGEDLLM_ATTENTION_BACKEND must be auto, triton or torch, got {value!r}."
        )
    return value


def server_dev_mode() -> bool:
    """PAGEDLLM_SERVER_DEV_MODE, else vLLM's VLLM_SERVER_DEV_MODE: serve the development
    routes (``POST /reset_prefix_cache``), which act on every client's state; off by
    default, as in vLLM, since any client holding the API key (or any, without one) could
    call them."""
    return _get_bool("PAGEDLLM_SERVER_DEV_MODE", False) or _get_bool("VLLM_SERVER_DEV_MODE", False)


def use_modelscope() -> bool:
    """PAGEDLLM_USE_MODELSCOPE, or vLLM's VLLM_USE_MODELSCOPE: download models named by a
    repo id from ModelScope instead of the Hugging Face Hub (``pip install modelscope``)."""
    return _get_bool("PAGEDLLM_USE_MODELSCOPE", False) or _get_bool("VLLM_USE_MODELSCOPE", False)


def attention_prefill_config() -> str | None:
    """PAGEDLLM_ATTENTION_PREFILL_CONFIG: ``tile_n,num_warps,num_stages,rows`` for the Triton
    paged-attention kernel on steps that carry prefill, in place of the GPU's tuned launch
    (``kernels/attention_launch.py``; ``benchmarks/attention_tuning.py --mixed`` prints the
    fastest)."""
    return os.environ.get("PAGEDLLM_ATTENTION_PREFILL_CONFIG") or None


def attention_decode_config() -> str | None:
    """PAGEDLLM_ATTENTION_DECODE_CONFIG: ``tile_n,num_warps,num_stages`` for the Triton
    paged-attention kernel on decode steps over a 16-bit cache, in place of the GPU's tuned
    launch (``benchmarks/attention_tuning.py`` times them)."""
    return os.environ.get("PAGEDLLM_ATTENTION_DECODE_CONFIG") or None


def ray_placement_timeout_s() -> float:
    """PAGEDLLM_RAY_PLACEMENT_TIMEOUT: seconds the ray backend waits for the cluster to place
    its ranks (each pipeline stage's ranks on one node) before it gives up with an error
    naming what was missing (default 120)."""
    value = os.environ.get("PAGEDLLM_RAY_PLACEMENT_TIMEOUT", "120")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):  # NaN fails too
        raise ValueError(
            f"PAGEDLLM_RAY_PLACEMENT_TIMEOUT must be a positive number of seconds, got {value!r}."
        )
    return seconds


def dependent_launch() -> bool:
    """PAGEDLLM_PDL: launch the decode step's Triton kernels with programmatic dependent
    launch on compute capability 9.0+ (default on; 0 launches each after the one before
    ends, for comparison and debugging)."""
    return _get_bool("PAGEDLLM_PDL", True)
