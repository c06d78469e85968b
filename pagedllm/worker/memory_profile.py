"""How much GPU memory one worst-case step needs beyond the weights (KV sizing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pagedllm.model.decoder import ForwardContext
from pagedllm.worker.input_batch import HostBatch
from pagedllm.worker.kv_cache import KVCachePlan, allocate_kv_caches
from pagedllm.worker.step_plan import eager_step_batch, plan_step

if TYPE_CHECKING:
    from pagedllm.worker.model_runner import ModelRunner

# Kept free for the CUDA graphs' private memory pool (activations of the largest decode
# batch live there).
GRAPH_RESERVE = 1 << 30


@torch.inference_mode()
def profile_peak_activations(runner: ModelRunner) -> int:
    """Peak bytes of a forward pass over ``max_num_batched_tokens`` prompt tokens plus logits
    and top-k/top-p sampling for ``max_num_seqs`` rows, measured on the device."""
    assert runner.model is not None
    sched = runner.config.scheduler_config
    lens = _split(sched.max_num_batched_tokens, runner.model_config.max_model_len)
    bs = runner.block_size
    per_token = runner.model_config.kv_bytes_per_token(runner.config.cache_config.cache_dtype)
    plan = KVCachePlan(sum(-(-n // bs) for n in lens), bs, per_token)
    caches = allocate_kv_caches(runner.model_config, plan, runner.kv_cache_dtype, runner.device)
    host = _prefill_batch(lens, bs)
    batch = eager_step_batch(host, plan_step(host, 1), runner.device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ctx = ForwardContext(runner.backend, runner.backend.build_metadata(batch.attn), caches)
    hidden = runner.model(batch.input_ids, batch.positions, ctx)
    rows = min(sched.max_num_seqs, hidden.shape[0])
    logits = runner.model.compute_logits(hidden[:rows])
    del hidden
    from pagedllm.sample.metadata import SamplingMetadata

    device = runner.device
    md = SamplingMetadata(
        temperature=torch.ones(rows, device=device),
        greedy=torch.zeros(rows, dtype=torch.bool, device=device),
        all_greedy=False,
        all_random=True,
        top_k=torch.full((rows,), 50, dtype=torch.int64, device=device),
        top_p=torch.full((rows,), 0.9, device=device),
        min_p=None,
        max_num_logprobs=runner.model_config.max_logprobs,
    )
    runner.sampler(logits, md)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del logits, caches, ctx, batch
    return peak


def _split(tokens: int, max_len: int) -> list[int]:
    lens = []
    while tokens > 0:
        lens.append(min(tokens, max_len))
        tokens -= lens[-1]
    return lens


def _prefill_batch(lens: list[int], block_size: int) -> HostBatch:
    """Whole prompts of the given lengths in consecutive blocks of a fresh cache."""
    positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lens])
    qsl = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    blocks_per = [-(-n // block_size) for n in lens]
    first = np.concatenate([[0], np.cumsum(blocks_per)[:-1]])
    table = np.zeros((len(lens), max(blocks_per)), dtype=np.int32)
    slots = []
    for i, (n, b0) in enumerate(zip(lens, first)):
        table[i, : blocks_per[i]] = np.arange(b0, b0 + blocks_per[i])
        slots.append(b0 * block_size + np.arange(n, dtype=np.int64))
    return HostBatch(
        req_ids=[f"profile-{i}" for i in range(len(lens))],
        input_ids=np.zeros(len(positions), dtype=np.int64),
        positions=positions,
        slot_mapping=np.concatenate(slots),
        query_start_loc=qsl,
        seq_lens=np.asarray(lens, dtype=np.int32),
        block_table=table,
        logits_indices=qsl[1:].astype(np.int64) - 1,
        sampled_req_indices=list(range(len(lens))),
        num_decodes=sum(1 for n in lens if n == 1),
        block_size=block_size,
    )
