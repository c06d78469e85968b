"""The CPU's default dtype (a table keyed on its features) and --cpu-threads: resolution,
refusals, and the engine core applying it. Quality of the default: tests/model/test_cpu_dtype.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pagedllm.config import EngineArgs, resolve_cpu_threads, resolve_dtype
from pagedllm.cpu_platform import (
    available_cpus,
    cpu_flags,
    default_cpu_dtype,
    float16_batched_slowdown,
    parse_cpu_binding,
    physical_cores,
)

SAPPHIRE_RAPIDS = frozenset(["avx2", "f16c", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"])
ICE_LAKE = frozenset(["avx2", "f16c", "avx512f", "avx512bw", "avx512vl"])
HASWELL = frozenset(["avx2", "f16c", "fma"])


@pytest.mark.parametrize(
    "flags, dtype",
    [
        (SAPPHIRE_RAPIDS, "float16"),
        (frozenset({"amx_fp16", "avx2"}), "float16"),
        (ICE_LAKE, "float32"),
        (HASWELL, "float32"),  # float16 products without native arithmetic: slow batched
        (frozenset({"avx512_bf16", "amx_bf16"}), "float32"),  # bfloat16 fails the quality bar
        (frozenset(), "float32"),
    ],
)
def test_the_cpu_dtype_table(flags, dtype):
    choice = default_cpu_dtype(flags)
    assert choice.dtype == dtype
    assert choice.reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_fp16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_fp16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_on_the_cpu_follows_this_machines_flags_and_an_explicit_dtype_wins(monkeypatch):
    import pagedllm.cpu_platform as platform

    monkeypatch.delenv("PAGEDLLM_CPU_DTYPE", raising=False)
    # The float16 probe's own test is below; here it must not decide under a loaded CI host.
    monkeypatch.setattr(platform, "float16_batched_slowdown", lambda: 1.0)
    expected = default_cpu_dtype(cpu_flags()).dtype
    assert resolve_dtype("auto", object(), "cpu") == expected
    for asked in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(asked, object(), "cpu") == asked


@pytest.mark.parametrize("slowdown, dtype", [(1.0, "float16"), (5.0, "float32")])
def test_float16_is_kept_only_if_its_batched_product_is_fast_here(monkeypatch, slowdown, dtype):
    import pagedllm.cpu_platform as platform

    monkeypatch.delenv("PAGEDLLM_CPU_DTYPE", raising=False)
    monkeypatch.setattr(platform, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    timed = []
    monkeypatch.setattr(platform, "float16_batched_slowdown", lambda: timed.append(1) or slowdown)
    assert resolve_dtype("auto", object(), "cpu") == dtype
    assert timed == [1]
    monkeypatch.setattr(platform, "cpu_flags", lambda: HASWELL)
    assert resolve_dtype("auto", object(), "cpu") == "float32"
    assert timed == [1]  # no float16 row: nothing timed


def test_the_float16_probe_measures_a_ratio_and_leaves_the_threads():
    import torch

    before = torch.get_num_threads()
    ratio = float16_batched_slowdown(rows=4, tries=2)
    assert 0 < ratio < 1000
    assert torch.get_num_threads() == before


def test_the_cpu_dtype_variable_pins_auto_only(monkeypatch):
    monkeypatch.setenv("PAGEDLLM_CPU_DTYPE", "bfloat16")
    assert resolve_dtype("auto", object(), "cpu") == "bfloat16"
    assert resolve_dtype("float16", object(), "cpu") == "float16"
    monkeypatch.setenv("PAGEDLLM_CPU_DTYPE", "fp8")
    with pytest.raises(ValueError, match="PAGEDLLM_CPU_DTYPE must be auto"):
        resolve_dtype("auto", object(), "cpu")


def _fake_topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    for cpu, (package, core) in cores.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_physical_cores_count_hyperthreads_once(tmp_path: Path):
    # Two sockets, two cores each, two hyper-threads per core.
    layout = {cpu: (cpu // 4, (cpu % 4) // 2) for cpu in range(8)}
    root = _fake_topology(tmp_path, layout)
    assert physical_cores(set(range(8)), root) == 4
    assert physical_cores({0, 1}, root) == 1  # one core's two threads
    assert physical_cores({0, 2, 4}, root) == 3
    assert physical_cores({0, 9}, root) == 2  # no topology for cpu9: count the CPUs


def test_cpu_threads_default_and_explicit(monkeypatch):
    monkeypatch.delenv("PAGEDLLM_CPU_NUM_THREADS", raising=False)
    cpus = available_cpus()
    assert resolve_cpu_threads(None, 1) == physical_cores(cpus)
    assert resolve_cpu_threads(None, 2) is None  # each rank splits its own machine
    assert resolve_cpu_threads(1, 1) == 1
    assert resolve_cpu_threads(len(cpus), 1) == len(cpus)
    monkeypatch.setenv("PAGEDLLM_CPU_NUM_THREADS", "1")
    assert resolve_cpu_threads(None, 1) == 1
    assert resolve_cpu_threads(None, 2) == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_cpu_threads_below_one_or_not_whole_is_refused(bad):
    with pytest.raises(ValueError, match="cpu_threads must be a whole number >= 1"):
        resolve_cpu_threads(bad, 1)


def test_cpu_threads_beyond_the_available_cpus_is_refused():
    too_many = len(available_cpus()) + 1
    with pytest.raises(ValueError, match=f"cpu_threads={too_many} is more than the"):
        EngineArgs(device="cpu", cpu_threads=too_many).create_engine_config()


def test_a_malformed_thread_variable_is_refused(monkeypatch):
    monkeypatch.setenv("PAGEDLLM_CPU_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="PAGEDLLM_CPU_NUM_THREADS must be a whole number"):
        resolve_cpu_threads(None, 1)


def test_the_cli_takes_cpu_threads():
    from tests.unit.test_serve_flags_vllm import configure

    config = configure("--cpu-threads", "1")
    assert config.parallel_config.cpu_threads == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "value, ranks, expected",
    [
        ("auto", 1, None),
        ("nobind", 2, None),
        ("", 1, None),
        ("0-3", 1, (frozenset({0, 1, 2, 3}),)),
        ("0-1,6|2-3", 2, (frozenset({0, 1, 6}), frozenset({2, 3}))),
    ],
)
def test_vllm_thread_binding_is_read_as_vllm_writes_it(value, ranks, expected):
    assert parse_cpu_binding(value, ranks, set(range(8))) == expected


@pytest.mark.parametrize(
    "value, ranks, message",
    [
        ("0-3", 2, "gives 1 CPU list"),
        ("0-3|4-5", 1, "gives 2 CPU list"),
        ("0-9", 1, "names CPUs \\[8, 9\\]"),
        ("zero", 1, "Cannot read CPU ids"),
        ("0-", 1, "Cannot read CPU ids"),
        ("3-1", 1, "Cannot read CPU ids"),
        ("0-1|", 2, "Cannot read CPU ids"),
    ],
)
def test_a_bad_thread_binding_is_refused(value, ranks, message):
    with pytest.raises(ValueError, match=message):
        parse_cpu_binding(value, ranks, set(range(8)))


def test_bound_ranks_take_one_thread_per_cpu_unless_asked(monkeypatch):
    monkeypatch.delenv("PAGEDLLM_CPU_NUM_THREADS", raising=False)
    one = (frozenset({0}),)
    assert resolve_cpu_threads(None, 1, one) is None  # the runner: len of its list
    with pytest.raises(ValueError, match="VLLM_CPU_OMP_THREADS_BIND gives a rank"):
        resolve_cpu_threads(2, 1, one)


def test_the_engine_core_process_runs_with_the_threads_asked(monkeypatch):
    """The model's process (here the engine core in its own process) sets torch's pool."""
    from pagedllm import LLM

    monkeypatch.delenv("PAGEDLLM_ENABLE_MULTIPROCESSING", raising=False)
    llm = LLM(kv_cache_memory_bytes="64M", max_model_len=256, cpu_threads=1)
    try:
        threads, cpus = llm.llm_engine.call_core("cpu_placement")
        assert threads == 1
        assert set(cpus) == available_cpus()  # no binding asked: the OS places the threads
    finally:
        llm.llm_engine.shutdown()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_the_engine_core_process_is_bound_as_vllms_variable_says(monkeypatch):
    from pagedllm import LLM

    last = max(available_cpus())
    monkeypatch.delenv("PAGEDLLM_ENABLE_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("PAGEDLLM_CPU_NUM_THREADS", raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(last))
    llm = LLM(kv_cache_memory_bytes="64M", max_model_len=256)
    try:
        threads, cpus = llm.llm_engine.call_core("cpu_placement")
        assert (threads, list(cpus)) == (1, [last])
        out = llm.generate("Hello", use_tqdm=False)[0]
        assert out.outputs[0].token_ids
    finally:
        llm.llm_engine.shutdown()


def test_cpu_threads_on_a_gpu_is_refused_not_ignored():
    args = EngineArgs(cpu_threads=2)
    model_config = args._model_config("cpu")
    with pytest.raises(ValueError, match=r"cpu_threads=2 sizes the threads .* runs on cuda"):
        args._parallel_config("cuda", model_config)
