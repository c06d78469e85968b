"""Tensor and pipeline parallelism on the CPU over gloo: each multi-rank engine against the
same model on one rank, with chunked prefill, prefix caching and preemption in play.

Both engines get the same number of KV blocks (each rank of a 2-rank engine holds half of
each token's KV: half the heads, or half the layers, so it gets half the bytes), so the
scheduler makes the same decisions and the steps compute the same batches: logprobs over
the whole vocabulary agree within float32 rounding (the all-reduces sum in another order)
and the greedy tokens are identical.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.engine.exceptions import EngineDeadError
from pagedllm.inputs import TokensPrompt
from tests.conftest import admission_forecast_off, engine_in_process, tiny_config

BLOCK = 16
NUM_BLOCKS = 14  # ~24 blocks of work: requests are preempted and recomputed
SHARED = list(range(3, 3 + 2 * BLOCK))  # two full blocks every prompt shares (prefix caching)
PROMPTS = [SHARED + [(7 * i + j) % 300 + 3 for j in range(6 + 5 * i)] for i in range(5)]
MAX_TOKENS = 32


def _kv_bytes_per_token(arch: str) -> int:
    c = tiny_config(arch)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4  # float32


def generate_greedy(
    model: Path, arch: str, tp: int = 1, pp: int = 1, backend: str = "mp"
) -> tuple[list, dict]:
    """Generate greedily; every token's logprobs over the whole vocabulary."""
    budget = NUM_BLOCKS * BLOCK * _kv_bytes_per_token(arch) // (tp * pp)
    # Admitting freely: the budget then forces preemptions, which the ranks must agree on.
    with engine_in_process(), admission_forecast_off():
        llm = LLM(
            str(model), tensor_parallel_size=tp, pipeline_parallel_size=pp,
            kv_cache_memory_bytes=budget, max_model_len=128, max_num_seqs=5,
            max_num_batched_tokens=32, max_logprobs=-1, skip_tokenizer_init=True,
            distributed_executor_backend=backend,
        )  # fmt: skip
    try:
        params = SamplingParams(
            max_tokens=MAX_TOKENS, temperature=0, logprobs=-1, detokenize=False, ignore_eos=True
        )
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS], params)
        state = llm.llm_engine.kv_cache_state()
    finally:
        llm.llm_engine.shutdown()
        llm.llm_engine.core.engine_core.shutdown()  # the in-process core's worker ranks
    return [o.outputs[0] for o in outs], state


@pytest.fixture(scope="module")
def references(tiny_models: dict[str, Path]) -> dict[str, tuple[list, dict]]:
    return {arch: generate_greedy(tiny_models[arch], arch) for arch in ("llama", "qwen2", "qwen3")}


@pytest.mark.parametrize(
    ("arch", "tp", "pp"),
    [("llama", 2, 1), ("qwen2", 2, 1), ("qwen3", 2, 1),
     ("llama", 1, 2), ("qwen2", 1, 2), ("qwen3", 1, 2)],
)  # fmt: skip
def test_matches_one_rank(tiny_models: dict[str, Path], references, arch: str, tp: int, pp: int):
    assert_same_run(references[arch], generate_greedy(tiny_models[arch], arch, tp, pp))


def assert_same_run(reference: tuple[list, dict], run: tuple[list, dict]) -> None:
    """The same scheduling (preemptions, blocks), greedy tokens and logprobs."""
    expected, expected_state = reference
    got, state = run
    assert expected_state["num_preemptions"] > 0, "the KV budget must force preemption"
    assert state["num_preemptions"] == expected_state["num_preemptions"]
    assert state["num_blocks"] == expected_state["num_blocks"]
    for want, have in zip(expected, got):
        assert have.token_ids == want.token_ids
        assert len(have.logprobs) == MAX_TOKENS
        for step_want, step_have in zip(want.logprobs, have.logprobs):
            assert step_have.keys() == step_want.keys()
            worst = max(abs(step_have[t].logprob - step_want[t].logprob) for t in step_want)
            assert worst < 1e-4


def test_smollm_heads_not_divisible_is_refused_with_the_numbers():
    """SmolLM2-135M has 9 attention heads (3 KV heads): vLLM refuses TP=2, and so do we."""
    with pytest.raises(ValueError, match=r"attention heads \(9\).*tensor_parallel_size \(2\)"):
        LLM(tensor_parallel_size=2, kv_cache_memory_bytes="96M", max_model_len=2048)


def test_unsupported_backend_and_sizes_are_refused(tiny_models: dict[str, Path]):
    model = str(tiny_models["llama"])
    with pytest.raises(ValueError, match="distributed_executor_backend='spark' is not supported"):
        LLM(model, tensor_parallel_size=2, distributed_executor_backend="spark")
    with pytest.raises(ValueError, match="distributed_executor_backend='uni' is not supported"):
        LLM(model, tensor_parallel_size=2, distributed_executor_backend="uni")
    with pytest.raises(ValueError, match=r"pipeline_parallel_size \(3\) is larger than"):
        LLM(model, pipeline_parallel_size=3)
    with pytest.raises(ValueError, match=r"attention heads \(4\).*tensor_parallel_size \(3\)"):
        LLM(model, tensor_parallel_size=3)


def test_a_dead_worker_ends_the_engine_within_seconds(tiny_models: dict[str, Path]):
    """A killed rank: the engine core notices (while idle, or in the step that needs the
    rank), stops, and the front end reports it; the other rank does not linger."""
    llm = LLM(
        str(tiny_models["qwen2"]), tensor_parallel_size=2, kv_cache_memory_bytes="1M",
        max_model_len=128, skip_tokenizer_init=True,
    )  # fmt: skip
    params = SamplingParams(max_tokens=4, temperature=0, detokenize=False)
    prompt = TokensPrompt(prompt_token_ids=[5, 6, 7])
    assert len(llm.generate([prompt], params)[0].outputs[0].token_ids) == 4
    pids = llm.llm_engine.call_core("worker_pids")
    assert len(pids) == 2
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(EngineDeadError):
        llm.generate([prompt], params)
    assert time.monotonic() - start < 15
    deadline = time.monotonic() + 10
    while _alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pids[0]), "the surviving rank must exit with the engine"
    llm.llm_engine.shutdown()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reaped if it is our child (it is not)
    except ChildProcessError:
        waited = 0
    if waited:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_kv_heads_replicated_when_ranks_outnumber_them():
    """vLLM's rule: with tp > num_kv_heads each rank holds one KV head, the one its query
    heads use (rank r: head r // (tp // kv)); q, o and the vocabulary still split."""
    from pagedllm.distributed.parallel_state import ModelParallel
    from pagedllm.model.decoder import DecoderSpec
    from pagedllm.model.sharding import SKIP, Region, ShardPlan

    spec = DecoderSpec.from_config(tiny_config("qwen2"), "qwen2")  # 4 heads, 2 KV heads
    d = spec.head_dim
    plans = [ShardPlan(spec, ModelParallel(tp_rank=r, tp_size=4)) for r in range(4)]
    assert [p.num_kv_heads for p in plans] == [1, 1, 1, 1]
    assert [p.kv_head_start for p in plans] == [0, 0, 1, 1]
    k = "model.layers.0.self_attn.k_proj.weight"
    assert plans[3].region(k, (2 * d, 64)) == Region(0, d, d)
    assert plans[3].region("model.layers.0.self_attn.q_proj.bias", (4 * d,)) == Region(0, 3 * d, d)
    assert plans[1].region("model.layers.0.self_attn.o_proj.weight", (64, 4 * d)) == Region(1, d, d)
    assert plans[1].region("model.layers.0.mlp.down_proj.bias", (64,)) == SKIP
    assert plans[0].region("model.layers.0.mlp.down_proj.bias", (64,)) is None
    assert plans[3].region("lm_head.weight", (384, 64)) == Region(0, 288, 96)
    two_stages = ShardPlan(spec, ModelParallel(pp_rank=1, pp_size=2))
    assert two_stages.region("model.layers.0.input_layernorm.weight", (64,)) == SKIP
    assert two_stages.region("model.layers.1.input_layernorm.weight", (64,)) is None
    # Qwen2's tiny config ties the embeddings: the last stage reads the table for its head.
    assert two_stages.region("model.embed_tokens.weight", (384, 64)) is None
