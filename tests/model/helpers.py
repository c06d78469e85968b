"""Run pagedllm's model directly on a hand-built batch, to compare logits with transformers."""

from __future__ import annotations

import torch

from pagedllm.core.scheduler_output import NewRequestData, SchedulerOutput
from pagedllm.model.decoder import ForwardContext
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.step_plan import build_step_batch


def prefill_logits(llm, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Logits at every position of each prompt, all prompts in one ragged batch.

    Writes KV into blocks the block pool does not know are taken: the engine must be idle,
    and its prefix cache is reset afterwards (those blocks may have held cached prefixes).
    """
    assert not llm.llm_engine.has_unfinished_requests()
    runner = llm.llm_engine.engine_core.runner
    block_size = runner.block_size
    new_reqs, counts, next_block = [], {}, 0
    for i, ids in enumerate(prompts):
        n_blocks = -(-len(ids) // block_size)
        blocks = list(range(next_block, next_block + n_blocks))
        next_block += n_blocks
        rid = f"logits-{i}"
        new_reqs.append(NewRequestData(rid, ids, SamplingParams(temperature=0), blocks, 0))
        counts[rid] = len(ids)
    so = SchedulerOutput(new_reqs, [], counts, sum(counts.values()))
    runner.update_states(so)
    try:
        batch = build_step_batch(so, runner.requests, runner.block_table, block_size, runner.device)
        ctx = ForwardContext(
            runner.backend, runner.backend.build_metadata(batch.attn), runner.kv_caches
        )
        with torch.inference_mode():
            hidden = runner.model(batch.input_ids, batch.positions, ctx)
            logits = runner.model.compute_logits(hidden)
    finally:
        runner.update_states(SchedulerOutput([], [], {}, 0, finished_req_ids=set(counts)))
        assert llm.reset_prefix_cache()
    starts = batch.attn.query_start_loc_cpu
    order = {rid: i for i, rid in enumerate(batch.req_ids)}
    return [logits[starts[order[r]] : starts[order[r] + 1]] for r in counts]
