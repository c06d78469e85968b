"""How the paged-attention kernel is launched: keys per step, warps, pipeline stages, rows
and a register cap, by batch kind (decodes over a 16-bit or an FP8 cache, steps with
prefill) and by GPU, as ``benchmarks/attention_tuning.py`` measured them.

The tables are keyed by a part of the GPU's name (``torch.cuda.get_device_name``); a GPU
no table names takes the H200's, where most of them were tuned. A launch that was not
measured on a GPU is the H200's there too, and says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pagedllm import envs


@dataclass(frozen=True)
class LaunchConfig:
    """Keys per inner step and the launch shape."""

    tile_n: int = 32
    num_warps: int = 4
    num_stages: int = 2
    # Rows (queries x heads of a group) a prefill tile holds; decodes use one query's group.
    rows: int = 64
    # A cap on registers a thread (Triton's ``maxnreg``); None: the compiler's choice. Fewer
    # registers fit more programs on a multiprocessor: more loads in flight.
    max_registers: int | None = None


@dataclass(frozen=True)
class AttentionLaunches:
    """One GPU's launches. Invariant: both decode launches take as many keys a step as
    the kernel's decode tiles inside steps with prefill (``DECODE_CONFIG.tile_n``)."""

    decode: LaunchConfig
    fp8_decode: LaunchConfig
    prefill: LaunchConfig


# Best on an H200 (benchmarks/RESULTS.md): decodes, 256 of ~1000 tokens at G = 2 and 4;
# prefill, 16 fresh 512-token prompts beside 256 decodes and 4 prompts of 2,048 tokens
# (128-row tiles: 32 queries of a group of 4).
DECODE_CONFIG = LaunchConfig(tile_n=64, num_warps=4, num_stages=3)
PREFILL_CONFIG = LaunchConfig(tile_n=32, num_warps=4, num_stages=2, rows=128)
# Decodes over an FP8 cache: left to itself the compiler gives them ~200 registers a thread,
# two programs a multiprocessor, and the cache's reads stall at half the copy rate; capped
# at 128 (a few spills) four fit. W2's decode (1000 requests of 640 tokens, G = 4) on an
# H100, with the float16 products: 544 us a layer against 787 at the earlier (128, 4, 2)
# uncapped, and 891 for the bfloat16 cache (benchmarks/RESULTS.md, "Decode attention over
# an FP8 cache", 2026-12-06). Measured on the H100 only.
FP8_DECODE_CONFIG = LaunchConfig(tile_n=64, num_warps=4, num_stages=2, max_registers=128)

H200 = AttentionLaunches(decode=DECODE_CONFIG, fp8_decode=FP8_DECODE_CONFIG, prefill=PREFILL_CONFIG)
# The H100 (3.35 TB/s against the H200's 4.8, the same multiprocessors): two stages fit a
# fourth decode program on each (127 registers a thread, not 167), 2-3% faster there: W1's
# decode 258.5 against 264.8 us a layer, W2's 870.0 against 892.7 (benchmarks/RESULTS.md,
# "Launches by GPU", 2026-12-06). Its prefill launch is the H200's (not measured there).
H100 = AttentionLaunches(
    decode=LaunchConfig(tile_n=64, num_warps=4, num_stages=2),
    fp8_decode=FP8_DECODE_CONFIG,
    prefill=PREFILL_CONFIG,
)
# A part of the GPU's name -> its launches, the first that matches.
BY_GPU: tuple[tuple[str, AttentionLaunches], ...] = (("H200", H200), ("H100", H100))


def launches_for(gpu_name: str | None) -> AttentionLaunches:
    """The launches of the first table whose key is in ``gpu_name``; the H200's otherwise
    (None: no GPU, as under Triton's interpreter)."""
    for key, launches in BY_GPU:
        if gpu_name is not None and key in gpu_name:
            return launches
    return H200


_CHOICES = {"tile_n": (16, 32, 64, 128), "num_warps": (2, 4, 8), "num_stages": (1, 2, 3, 4),
            "rows": (16, 32, 64, 128)}  # fmt: skip


@functools.cache
def _parse_launch(name: str, spec: str, fields: tuple[str, ...]) -> LaunchConfig:
    """``spec`` (``fields`` as comma-separated integers, from the variable ``name``) -> a
    LaunchConfig, each value checked."""
    try:
        values = tuple(int(v) for v in spec.split(","))
    except ValueError:
        values = ()
    if len(values) != len(fields):
        raise ValueError(f"{name} must be {len(fields)} integers '{','.join(fields)}', "
                         f"got {spec!r}")  # fmt: skip
    for field, value in zip(fields, values):
        if value not in _CHOICES[field]:
            raise ValueError(f"{name}: {field} must be one of {_CHOICES[field]}, got {value}")
    return LaunchConfig(**dict(zip(fields, values)))


_PREFILL_FIELDS = ("tile_n", "num_warps", "num_stages", "rows")
_DECODE_FIELDS = ("tile_n", "num_warps", "num_stages")


def prefill_config(launches: AttentionLaunches = H200) -> LaunchConfig:
    """The launch for steps with prefill: PAGEDLLM_ATTENTION_PREFILL_CONFIG, else the GPU's."""
    spec = envs.attention_prefill_config()
    if spec:
        return _parse_launch("PAGEDLLM_ATTENTION_PREFILL_CONFIG", spec, _PREFILL_FIELDS)
    return launches.prefill


def decode_config(launches: AttentionLaunches = H200) -> LaunchConfig:
    """The launch for decodes over a 16-bit cache: PAGEDLLM_ATTENTION_DECODE_CONFIG, else
    the GPU's."""
    spec = envs.attention_decode_config()
    if spec:
        return _parse_launch("PAGEDLLM_ATTENTION_DECODE_CONFIG", spec, _DECODE_FIELDS)
    return launches.decode


def launch_config(
    max_query_len: int, fp8_cache: bool, launches: AttentionLaunches = H200
) -> LaunchConfig:
    """A GPU's launch for a batch: decodes (one query a request) or steps with prefill."""
    if max_query_len != 1:
        return prefill_config(launches)
    return launches.fp8_decode if fp8_cache else decode_config(launches)


def register_cap(config: LaunchConfig, interpreted: bool) -> dict[str, int]:
    """The launch's ``maxnreg`` where the config caps registers (the interpreter has none)."""
    if config.max_registers is None or interpreted:
        return {}
    return {"maxnreg": config.max_registers}
