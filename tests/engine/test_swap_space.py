"""swap_space (issue 20): the host tier of the prefix cache on real (tiny, random) models.

A device KV cache too small to keep earlier prompts, the prompts asked again: with the tier
their blocks come back from host memory instead of being recomputed, and every output is
the same as without the tier (greedy and seeded sampling), on one rank, with an FP8 cache,
with swap preemption, and with tensor parallelism. Block integrity is checked after each
scenario (ref counts, free queue, hash maps, host slots, pins).
"""

from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs
from pagedllm.engine.core import is_device_failure
from pagedllm.executor.errors import HostTierError
from pagedllm.worker import host_kv_cache
from pagedllm.worker.host_kv_cache import _QUEUE_AHEAD, HostKVCache, _LazyLoads, plan_loads
from pagedllm.worker.kv_cache import KVCachePlan
from tests.conftest import engine_in_process, tiny_config

BLOCK = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)


def block_bytes(arch: str, element: int = 4) -> int:
    c = tiny_config(arch)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * element * BLOCK


def gib(num_blocks: int, arch: str = "llama", element: int = 4) -> float:
    return num_blocks * block_bytes(arch, element) / (1 << 30)


def build(path: Path, device_blocks: int, host_blocks: int, element: int = 4, **kwargs) -> LLM:
    kwargs.setdefault("max_num_seqs", 2)
    kwargs.setdefault("max_model_len", 256)
    kwargs.setdefault("device", "cpu")  # sized for float32 (test_on_cuda: the GPU's bfloat16)
    with engine_in_process():
        return LLM(
            model=str(path), skip_tokenizer_init=True,
            kv_cache_memory_bytes=device_blocks * block_bytes("llama", element),
            swap_space=gib(host_blocks, element=element), **kwargs,
        )  # fmt: skip


def prompts(seed: int, count: int = 8, length: int = 150) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 380) for _ in range(length)] for _ in range(count)]


def rounds(llm: LLM, batch: list[list[int]], params, num_rounds: int = 2) -> tuple[list, int]:
    """Each prompt asked ``num_rounds`` times (a round = all prompts); the outputs and the
    prompt tokens computed (not served by the cache) in the later rounds."""
    outputs, computed = [], 0
    for round_ in range(num_rounds):
        got = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        outputs.append([o.outputs[0].token_ids for o in got])
        if round_:
            computed += sum(len(o.prompt_token_ids) - o.num_cached_tokens for o in got)
    kv = llm.llm_engine.engine_core.kv_cache_manager
    kv.check_integrity()
    pool = kv.block_pool
    assert pool.get_num_free_blocks() == pool.num_blocks and not kv.req_to_blocks
    assert not kv.host_pins
    return outputs, computed


def host_loads(llm: LLM) -> int:
    tier = llm.llm_engine.engine_core.kv_cache_manager.host_tier
    return tier.num_loaded if tier is not None else 0


@pytest.mark.parametrize(
    "params",
    [GREEDY, SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=8, ignore_eos=True,
                            detokenize=False)],
    ids=["greedy", "seeded"],
)  # fmt: skip
def test_tier_hits_give_the_same_outputs_with_less_compute(tiny_models, params):
    # 24 device blocks hold ~2 of the 8 prompts (10 blocks each); 96 host blocks hold all.
    batch = prompts(0)
    with_tier = build(tiny_models["llama"], 24, 96)
    without = build(tiny_models["llama"], 24, 0)
    out_tier, computed_tier = rounds(with_tier, batch, params)
    out_plain, computed_plain = rounds(without, batch, params)
    assert out_tier == out_plain
    assert host_loads(with_tier) > 0
    # Without the tier the second round recomputes nearly everything; with it, only the
    # part of each prompt past its last whole block (150 = 9 blocks + 6 tokens).
    assert computed_plain > 0.8 * 8 * 150
    assert computed_tier == 8 * 6


def test_saves_ahead_give_the_same_outputs(tiny_models, monkeypatch):
    """Saves ahead, which only CUDA engines make, forced on the CPU engine: the same tokens
    as without the tier, and the same hits."""
    batch = prompts(1)
    monkeypatch.setattr(KVCachePlan, "save_ahead_blocks", lambda self, device: 4)
    ahead = build(tiny_models["llama"], 24, 96)
    monkeypatch.undo()
    without = build(tiny_models["llama"], 24, 0)
    out_ahead, computed = rounds(ahead, batch, GREEDY)
    assert out_ahead == rounds(without, batch, GREEDY)[0]
    assert computed == 8 * 6
    kv = ahead.llm_engine.engine_core.kv_cache_manager
    assert kv.block_pool.save_ahead_blocks == 4 and kv.host_tier.num_saved_ahead > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_pinned_and_non_blocking(tiny_models):
    """The GPU path: pinned host memory read and written by the copy kernel, swap-ins on
    the tier's side stream waited for layer by layer in eager steps (a step with loads
    replays no CUDA graph), async scheduling (step N+1's copies queued while step N runs)."""
    batch = prompts(5)
    with_tier = build(tiny_models["llama"], 24, 96, element=2, device="cuda", dtype="bfloat16")
    without = build(tiny_models["llama"], 24, 0, element=2, device="cuda", dtype="bfloat16")
    out_tier, computed_tier = rounds(with_tier, batch, GREEDY)
    out_plain, _ = rounds(without, batch, GREEDY)
    assert out_tier == out_plain
    assert host_loads(with_tier) > 0 and computed_tier == 8 * 6


def test_fp8_kv_cache_is_copied_as_raw_bytes(tiny_models):
    batch = prompts(1)
    with_tier = build(tiny_models["llama"], 24, 96, element=1, kv_cache_dtype="fp8_e5m2")
    without = build(tiny_models["llama"], 24, 0, element=1, kv_cache_dtype="fp8_e5m2")
    out_tier, computed_tier = rounds(with_tier, batch, GREEDY)
    out_plain, _ = rounds(without, batch, GREEDY)
    assert out_tier == out_plain
    assert host_loads(with_tier) > 0 and computed_tier == 8 * 6


@pytest.mark.usefixtures("admit_freely")
def test_swap_preemption_gives_the_same_outputs(tiny_models):
    # Four requests that each grow to 5 blocks, 12 device blocks: decodes preempt.
    batch = prompts(2, count=4, length=40)
    params = SamplingParams(temperature=0.0, max_tokens=36, ignore_eos=True, detokenize=False)
    reference = build(tiny_models["llama"], 200, 0, max_num_seqs=4, max_model_len=128)
    swap = build(
        tiny_models["llama"], 12, 64, max_num_seqs=4, preemption_mode="swap", max_model_len=128
    )
    out_ref, _ = rounds(reference, batch, params, num_rounds=1)
    out_swap, _ = rounds(swap, batch, params, num_rounds=1)
    assert out_swap == out_ref
    core = swap.llm_engine.engine_core
    assert core.scheduler.num_preemptions > 0 and host_loads(swap) > 0


def test_a_failed_host_tier_copy_stops_the_engine(tiny_models, monkeypatch):
    """Which blocks the tier holds is unknown after a copy failed, so the step's failure is
    not blamed on a request (which would fail it and serve on over a tier in doubt): the
    engine stops."""
    llm = build(tiny_models["llama"], 24, 96)

    def failing_swap_out(self, blocks) -> None:
        if blocks:
            raise RuntimeError("the copy failed")

    monkeypatch.setattr(HostKVCache, "swap_out", failing_swap_out)
    with pytest.raises(HostTierError, match="a host-tier copy failed: RuntimeError"):
        llm.generate([{"prompt_token_ids": p} for p in prompts(4)], GREEDY, use_tqdm=False)
    assert is_device_failure(HostTierError("x")) and not is_device_failure(RuntimeError("x"))


def test_tensor_parallel_ranks_copy_their_own_share(tiny_models):
    """Two ranks (worker processes), each with half the KV heads in its own host tier."""
    batch = prompts(3, count=4, length=100)
    half = block_bytes("llama") // 2
    with engine_in_process():
        llm = LLM(
            model=str(tiny_models["llama"]), skip_tokenizer_init=True, max_model_len=128,
            tensor_parallel_size=2, kv_cache_memory_bytes=14 * half, max_num_seqs=2, device="cpu",
            swap_space=64 * half / (1 << 30),
        )  # fmt: skip
    try:
        out_tp, computed = rounds(llm, batch, GREEDY)
        state = llm.llm_engine.kv_cache_state()
        loads = host_loads(llm)
    finally:
        llm.llm_engine.shutdown()
        llm.llm_engine.core.engine_core.shutdown()
    reference, _ = rounds(build(tiny_models["llama"], 200, 0, device="cpu"), batch, GREEDY)
    assert out_tp == reference
    assert state["num_host_blocks"] == 64 and loads > 0
    assert computed == 4 * (100 % BLOCK)


def test_tier_in_the_engine_process_and_its_metrics(tiny_models):
    """The default engine (its core in another process): the stats reach /metrics."""
    batch = prompts(4, count=4, length=100)
    llm = LLM(
        model=str(tiny_models["llama"]), skip_tokenizer_init=True, max_model_len=128,
        kv_cache_memory_bytes=14 * block_bytes("llama"), swap_space=gib(64), max_num_seqs=2,
        disable_log_stats=False, device="cpu",
    )  # fmt: skip
    for _ in range(2):
        llm.generate([{"prompt_token_ids": p} for p in batch], GREEDY, use_tqdm=False)
    metrics = {m.name: m for m in llm.get_metrics()}
    hits = metrics["pagedllm:cpu_prefix_cache_hits"].value
    queries = metrics["pagedllm:cpu_prefix_cache_queries"].value
    assert 0 < hits <= queries
    assert hits % BLOCK == 0
    assert 0 < metrics["pagedllm:cpu_cache_usage_perc"].value <= 1
    assert llm.llm_engine.kv_cache_state()["num_host_blocks_used"] > 0


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"swap_space": -1}, "swap_space must be >= 0 GiB"),
        ({"swap_space": math.nan}, "swap_space must be a number of GiB"),
        ({"swap_space": "4"}, "swap_space must be a number of GiB"),
        ({"swap_space": 1e9}, r"swap_space=1000000000.0 GiB x 1 rank\(s\) needs .* available"),
        ({"swap_space": 1, "enable_prefix_caching": False}, "needs prefix caching"),
        ({"preemption_mode": "swap"}, "needs swap_space > 0"),
        ({"kv_offloading_size": -2}, "kv_offloading_size must be >= 0 GiB"),
        ({"kv_offloading_size": math.inf}, "kv_offloading_size must be a number of GiB"),
        ({"kv_offloading_size": 1e9}, r"kv_offloading_size=1000000000.0 GiB needs .* available"),
        ({"kv_offloading_size": 1, "enable_prefix_caching": False}, "needs prefix caching"),
        ({"preemption_mode": "drop", "swap_space": 0.01}, "preemption_mode must be one of"),
    ],
)
def test_bad_values_are_refused_at_start(tiny_models, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        EngineArgs(model=str(tiny_models["llama"]), **kwargs).create_engine_config()


def test_kv_offloading_size_is_the_same_tier(tiny_models):
    """vLLM's --kv-offloading-size (one rank: all of it) serves hits from the host tier as
    swap_space does, and swap preemption takes it as the swap space."""
    batch = prompts(5, count=4, length=100)
    with engine_in_process():
        llm = LLM(
            model=str(tiny_models["llama"]), skip_tokenizer_init=True, max_model_len=128,
            kv_cache_memory_bytes=14 * block_bytes("llama"), kv_offloading_size=gib(64),
            max_num_seqs=2, device="cpu", preemption_mode="swap",
        )  # fmt: skip
    outputs, computed = rounds(llm, batch, GREEDY)
    reference, _ = rounds(build(tiny_models["llama"], 200, 0), batch, GREEDY)
    assert outputs == reference
    assert llm.llm_engine.kv_cache_state()["num_host_blocks"] == 64 and host_loads(llm) > 0
    assert computed == 4 * (100 % BLOCK)


def test_a_swap_space_smaller_than_one_block_is_refused(tiny_models):
    with pytest.raises(ValueError, match=r"\(swap_space, or kv_offloading_size .* no KV block"):
        build(tiny_models["llama"], 24, 0.5)  # half a block
    with pytest.raises(ValueError, match="holds no KV block"), engine_in_process():
        LLM(
            model=str(tiny_models["llama"]), skip_tokenizer_init=True, max_model_len=256,
            kv_cache_memory_bytes=24 * block_bytes("llama"), kv_offloading_size=gib(0.5),
            device="cpu",
        )  # fmt: skip


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("min_run", [1, 1000])  # CUDA: the copy engines, or the copy kernel
@pytest.mark.parametrize(
    ("dtype", "block"),
    [(torch.float32, (4, 2, 8)), (torch.bfloat16, (4, 2, 8)), (torch.float8_e5m2, (4, 2, 8)),
     # a block's K of one layer in 30 and 15 bytes: copied as int16 and as bytes
     (torch.bfloat16, (3, 1, 5)), (torch.float8_e5m2, (3, 1, 5))],
)  # fmt: skip
def test_host_kv_cache_round_trip_is_exact(dtype, block, min_run, device, monkeypatch):
    """Blocks saved to scattered and consecutive slots (in passes smaller than a step's
    copies, a run cut where a pass fills) come back bit for bit, and blocks not copied into
    are untouched. With CUDA: pinned memory, swap-ins by the copy engines through the
    staging buffers or by the copy kernel, waited for through their loads."""
    monkeypatch.setattr(host_kv_cache, "MIN_RUN_BLOCKS", min_run)
    generator = torch.Generator().manual_seed(0)
    layers = [
        torch.randn((2, 12, *block), generator=generator).to(dtype).to(device) for _ in range(3)
    ]
    layers.append(torch.empty((0,), dtype=dtype, device=device))  # another stage's layer
    original = [layer.clone() for layer in layers]
    host = HostKVCache(layers, num_slots=8)
    host.capacity = 3
    saved = [(5, 0), (6, 1), (7, 2), (1, 6), (9, 4), (2, 7)]
    host.swap_out(saved)
    # Runs (0, 3) and (6, 2) and (4, 1); passes [0, 1, 2], [4, 6, 7].
    loads = host.swap_in([(0, 10), (1, 11), (2, 3), (6, 8), (4, 0), (7, 9)])
    assert (loads is not None) == (device == "cuda")  # CUDA: still copying on a side stream
    if loads is not None:
        loads.wait_all()
    assert host.host.is_pinned() == (device == "cuda")
    for layer, before in zip(layers[:3], original):
        raw, raw_before = layer.view(torch.uint8), before.view(torch.uint8)
        for target, source in [(10, 5), (11, 6), (3, 7), (8, 1), (0, 9), (9, 2)]:
            assert torch.equal(raw[:, target], raw_before[:, source])
        for untouched in (1, 2, 4, 5, 6, 7):
            assert torch.equal(raw[:, untouched], raw_before[:, untouched])


def test_swap_ins_are_planned_in_runs_of_consecutive_slots():
    """Slot order, a run per stretch of consecutive slots, passes of at most the capacity
    (a run cut where one fills), a slot asked twice in two runs."""
    copies = [(7, 70), (3, 30), (4, 40), (9, 90), (5, 50), (8, 80), (4, 41)]
    passes = plan_loads(copies, capacity=4)
    assert [p.runs for p in passes] == [[(3, 2), (4, 2)], [(7, 3)]]
    assert [p.blocks for p in passes] == [[30, 40, 41, 50], [70, 80, 90]]
    assert plan_loads(copies, capacity=100)[0].runs == [(3, 2), (4, 2), (7, 3)]


@pytest.mark.parametrize("device", DEVICES)
def test_saves_ahead_copy_beside_a_step_and_the_next_step_waits(device):
    """A step's swap-out, swap-in and saves ahead of blocks it does not touch: each slot
    holds its block's KV, the loaded blocks theirs; the next step's overwrite of a block
    saved ahead (with CUDA on the compute stream, after ``wait_saves``) leaves the saved
    copy intact."""
    generator = torch.Generator().manual_seed(1)
    layers = [torch.randn((2, 6, 4, 2, 8), generator=generator).to(device) for _ in range(4)]
    original = [layer.clone() for layer in layers]
    host = HostKVCache(layers, num_slots=6)
    host.swap_out([(0, 0)])
    loads = host.swap_in([(0, 5)])  # block 5 now holds block 0's KV
    host.save_ahead([(1, 1), (2, 2)])
    if loads is not None:
        loads.wait_all()
    host.wait_saves()
    for layer in layers:
        layer[:, 1:3] = 0  # the next step evicts and overwrites the blocks saved ahead
    loads = host.swap_in([(1, 3), (2, 4)])
    if loads is not None:
        loads.wait_all()
    for layer, before in zip(layers, original):
        assert torch.equal(layer[:, 5], before[:, 0])
        assert torch.equal(layer[:, 3:5], before[:, 1:3])


def test_lazy_loads_queue_each_layer_once_in_order_and_ahead():
    """A swap-in's copies by the copy engines are queued layer by layer as the forward pass
    reaches them: up to the layer reached and ``_QUEUE_AHEAD`` beyond, each once, in order;
    a layer of no stage here queues nothing more; the end (None) queues the rest."""

    class Tier:
        def __init__(self) -> None:
            self.layer_ids = [1, 2, 4, 5, 6, 8, 9, 11, 12]  # this rank's stage's layers
            self.queued: list[int] = []

        def _queue_layer(self, position, passes, blocks):
            self.queued.append(position)

    tier = Tier()
    lazy = _LazyLoads(tier, [], [])  # type: ignore[arg-type]
    lazy.queue(1)
    assert tier.queued == list(range(_QUEUE_AHEAD + 1))
    lazy.queue(2)
    lazy.queue(2)
    lazy.queue(1)
    assert tier.queued == list(range(_QUEUE_AHEAD + 2))
    lazy.queue(7)  # not this rank's
    assert tier.queued == list(range(_QUEUE_AHEAD + 2))
    lazy.queue(None)
    assert tier.queued == list(range(len(tier.layer_ids)))


def test_a_forward_pass_that_fails_still_queues_every_swap_in(tiny_models, monkeypatch):
    """The copy engines' layers are queued only as the forward pass reaches them (CUDA), and
    the loaded blocks stay registered as cached whatever becomes of the step: a pass that
    fails before its last layer must still queue the rest (``LayerLoads.wait_all``)."""
    from pagedllm.model.decoder import CausalLM
    from pagedllm.worker.host_kv_cache import LayerLoads

    llm = build(tiny_models["llama"], 24, 96)
    queued: list[int | None] = []
    swap_in, forward = HostKVCache.swap_in, CausalLM.forward

    def lazy_swap_in(self, copies):  # the CPU copies at once; the loads stand in for CUDA's
        swap_in(self, copies)
        return LayerLoads({}, queued.append) if copies else None

    def failing_forward(self, input_ids, positions, ctx):
        if ctx.kv_loads is not None:
            raise RuntimeError("the forward pass failed")
        return forward(self, input_ids, positions, ctx)

    monkeypatch.setattr(HostKVCache, "swap_in", lazy_swap_in)
    monkeypatch.setattr(CausalLM, "forward", failing_forward)
    batch = [{"prompt_token_ids": p} for p in prompts(4)]
    llm.generate(batch, GREEDY, use_tqdm=False)
    with contextlib.suppress(Exception):  # the steps with loads fail their requests
        llm.generate(batch, GREEDY, use_tqdm=False)
    assert queued and queued.count(None) == len(queued)  # each failed pass queued the rest
