"""The ray backend (``--distributed-executor-backend ray``): where ranks go, as pure
functions (always run), and the real thing on a local Ray instance (``ray.init(num_cpus=2)``,
only where Ray is installed: ``pip install 'pagedllm[ray]'``): TP=2 against one rank with
preemption and prefix caching in play, a rank killed mid-life, a cluster too small.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pagedllm import LLM, SamplingParams, envs
from pagedllm.config import EngineArgs
from pagedllm.distributed.parallel_state import ModelParallel
from pagedllm.engine.exceptions import EngineDeadError
from pagedllm.executor.ray_cluster import import_ray, ray_installed
from pagedllm.executor.ray_placement import (
    forwarded_env,
    rank_slots,
    ranks_on_same_node,
    rendezvous_url,
    stage_bundles,
)
from pagedllm.inputs import TokensPrompt
from tests.conftest import engine_in_process
from tests.engine.test_tensor_parallel import assert_same_run, generate_greedy

# -- placement, without Ray ---------------------------------------------------------------


def test_each_stage_is_one_placement_group_of_its_tp_ranks():
    slots = rank_slots(tp_size=4, pp_size=2)
    assert [(s.rank, s.stage, s.bundle) for s in slots] == [
        (0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 0, 3), (4, 1, 0), (5, 1, 1), (6, 1, 2), (7, 1, 3),
    ]  # fmt: skip
    # The same layout the ranks compute for themselves (their TP groups, their p2p partners).
    for s in slots:
        assert ModelParallel(tp_rank=s.bundle, tp_size=4, pp_rank=s.stage, pp_size=2).rank == s.rank


def test_each_rank_reserves_one_device_of_its_kind():
    assert stage_bundles(2, "cpu") == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert stage_bundles(8, "cuda") == [{"GPU": 1.0}] * 8
    with pytest.raises(ValueError, match="'cpu' or 'cuda', not 'mps'"):
        stage_bundles(2, "mps")


def test_rendezvous_is_on_rank_zeros_node():
    assert rendezvous_url(["10.0.0.7", "10.0.0.8"], 29500) == "tcp://10.0.0.7:29500"
    assert rendezvous_url(["fd00::1", "fd00::2"], 29500) == "tcp://[fd00::1]:29500"
    for port in (0, 65536):
        with pytest.raises(ValueError, match=r"outside 1\.\.65535"):
            rendezvous_url(["10.0.0.7"], port)
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        rendezvous_url(["10.0.0.7:29500@evil"], 1)


def test_threads_split_among_the_ranks_sharing_a_node():
    # -tp 2 -pp 2 on two nodes, then everything on one node.
    assert ranks_on_same_node(["a", "a", "b", "b"]) == [2, 2, 2, 2]
    assert ranks_on_same_node(["a", "a", "a", "b"]) == [3, 3, 3, 1]
    assert ranks_on_same_node(["a"] * 4) == [4] * 4


def test_ranks_see_the_engines_settings_but_not_its_secrets_or_interfaces():
    environ = {
        "PAGEDLLM_LOGGING_LEVEL": "DEBUG",
        "PAGEDLLM_CPU_NUM_THREADS": "4",
        "PAGEDLLM_API_KEY": "secret",
        "VLLM_API_KEY": "secret",
        "GLOO_SOCKET_IFNAME": "eth0",  # the node's own, set where `ray start` runs
        "HOME": "/root",
    }
    assert forwarded_env(environ) == {
        "PAGEDLLM_LOGGING_LEVEL": "DEBUG",
        "PAGEDLLM_CPU_NUM_THREADS": "4",
    }


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_placement_timeout_must_be_a_positive_number(monkeypatch, value: str):
    monkeypatch.setenv("PAGEDLLM_RAY_PLACEMENT_TIMEOUT", value)
    with pytest.raises(ValueError, match="PAGEDLLM_RAY_PLACEMENT_TIMEOUT must be a positive"):
        envs.ray_placement_timeout_s()
    monkeypatch.setenv("PAGEDLLM_RAY_PLACEMENT_TIMEOUT", "2.5")
    assert math.isclose(envs.ray_placement_timeout_s(), 2.5)


def test_without_ray_the_backend_names_the_extra(monkeypatch, tiny_models: dict[str, Path]):
    monkeypatch.setattr("pagedllm.executor.ray_cluster.ray_installed", lambda: False)
    with pytest.raises(ValueError, match=r"needs Ray.*pip install 'pagedllm\[ray\]'"):
        LLM(str(tiny_models["llama"]), tensor_parallel_size=2, distributed_executor_backend="ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    with pytest.raises(RuntimeError, match=r"pip install 'pagedllm\[ray\]'"):
        import_ray()


def test_ray_ranks_on_cuda_are_refused_as_mp_ranks_are(tiny_models: dict[str, Path]):
    args = EngineArgs(str(tiny_models["llama"]), distributed_executor_backend="ray")
    model_config = EngineArgs(str(tiny_models["llama"])).create_engine_config().model_config
    with pytest.raises(ValueError, match="'ray' runs on the CPU \\(gloo\\) only"):
        args._parallel_config("cuda", model_config)


# -- a local Ray instance --------------------------------------------------------------------

needs_ray = pytest.mark.skipif(not ray_installed(), reason="Ray is not installed (pagedllm[ray])")


@pytest.fixture(scope="module")
def local_ray():
    """Two CPUs, as CI has: room for TP=2 (one CPU reserved per rank), not for four ranks."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_tp2_on_ray_matches_one_rank(local_ray, monkeypatch, tiny_models: dict[str, Path]):
    """Qwen2 (biases): the same scheduling, greedy tokens and logprobs as on one rank. The
    inline limit is lowered so that steps with new prompts (~0.6-1.8 KiB pickled) go
    through the object store and decode steps (~0.5 KiB) inline: both carriers in play."""
    from pagedllm.executor import ray_executor

    monkeypatch.setattr(ray_executor, "_INLINE_BYTES", 1000)
    carried: list[type] = []
    carrier = ray_executor.RayExecutor._carrier
    monkeypatch.setattr(
        ray_executor.RayExecutor, "_carrier",
        lambda self, blob: carried.append(type(c := carrier(self, blob))) or c,
    )  # fmt: skip
    reference = generate_greedy(tiny_models["qwen2"], "qwen2")
    assert_same_run(reference, generate_greedy(tiny_models["qwen2"], "qwen2", 2, backend="ray"))
    assert bytes in carried and local_ray.ObjectRef in carried
    _wait_for_cpus(local_ray, 2)  # the actors and their placement group released


@needs_ray
def test_a_cluster_too_small_is_an_error_naming_what_it_lacks(
    local_ray, monkeypatch, tiny_models: dict[str, Path]
):
    """Four ranks on two CPUs: refused after PAGEDLLM_RAY_PLACEMENT_TIMEOUT, and the stage
    that was placed is released."""
    monkeypatch.setenv("PAGEDLLM_RAY_PLACEMENT_TIMEOUT", "2")
    with engine_in_process(), pytest.raises(RuntimeError, match="did not place 2 pipeline stage"):
        LLM(
            str(tiny_models["llama"]), tensor_parallel_size=2, pipeline_parallel_size=2,
            distributed_executor_backend="ray", kv_cache_memory_bytes="1M", max_model_len=128,
            skip_tokenizer_init=True,
        )  # fmt: skip
    _wait_for_cpus(local_ray, 2)


@needs_ray
def test_a_killed_actor_ends_the_engine(local_ray, monkeypatch, tiny_models: dict[str, Path]):
    """The engine core in its own process (as `pagedllm serve`), joining the running Ray
    instance through RAY_ADDRESS: a killed rank ends the engine within seconds, and the
    other rank goes with it (Ray ends the actors of a process that is gone)."""
    monkeypatch.setenv("RAY_ADDRESS", local_ray.get_runtime_context().gcs_address)
    llm = LLM(
        str(tiny_models["qwen2"]), tensor_parallel_size=2, distributed_executor_backend="ray",
        kv_cache_memory_bytes="1M", max_model_len=128, skip_tokenizer_init=True,
    )  # fmt: skip
    params = SamplingParams(max_tokens=4, temperature=0, detokenize=False)
    prompt = TokensPrompt(prompt_token_ids=[5, 6, 7])
    assert len(llm.generate([prompt], params)[0].outputs[0].token_ids) == 4
    pids = llm.llm_engine.call_core("worker_pids")
    assert len(pids) == 2 and os.getpid() not in pids
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(EngineDeadError):
        llm.generate([prompt], params)
    assert time.monotonic() - start < 15
    llm.llm_engine.shutdown()
    _wait_for_cpus(local_ray, 2)  # the surviving rank's actor is gone too


def _wait_for_cpus(ray, cpus: float, timeout: float = 15.0) -> None:
    """Ray frees released resources asynchronously."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, f"CPUs still held: {ray.available_resources()}"
        time.sleep(0.2)
