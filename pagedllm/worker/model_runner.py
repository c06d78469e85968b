"""The model runner: loads the model, owns the KV cache, runs one step.

Each step: update per-request state from the scheduler's plan, build the flat batch, run
the model, compute logits only where a token is sampled, sample, and report the tokens.
The one host-device synchronisation of a step is reading the sampled ids back.
"""

from __future__ import annotations

import time

import torch

from pagedllm import envs
from pagedllm.attention.backend import create_backend
from pagedllm.config import EngineConfig
from pagedllm.core.scheduler_output import LogprobsLists, ModelRunnerOutput, SchedulerOutput
from pagedllm.logger import init_logger
from pagedllm.model.decoder import CausalLM, ForwardContext
from pagedllm.model.loader import load_weights_into
from pagedllm.model.registry import build_model
from pagedllm.sample.logprobs import compute_logprobs
from pagedllm.sample.sampler import Sampler
from pagedllm.worker.input_batch import StepBatch, build_step_batch
from pagedllm.worker.kv_cache import GiB, KVCachePlan, allocate_kv_caches, plan_kv_cache
from pagedllm.worker.request_state import RequestState
from pagedllm.worker.sampling_inputs import build_sampling_metadata

logger = init_logger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config = config.model_config
        self.device = torch.device(config.device)
        self.dtype: torch.dtype = getattr(torch, self.model_config.dtype)
        self.block_size = config.cache_config.block_size
        self.backend = create_backend(config.device)
        self.sampler = Sampler()
        self.requests: dict[str, RequestState] = {}
        self.kv_caches: list[torch.Tensor] = []
        self.model: CausalLM | None = None
        threads = envs.cpu_num_threads()
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)
        torch.manual_seed(self.model_config.seed)

    # -- start-up ------------------------------------------------------------------------

    def load_model(self) -> None:
        start = time.perf_counter()
        mc = self.model_config
        with torch.device(self.device):
            model = build_model(mc.architecture, mc.hf_config, self.dtype)
        load_weights_into(model, mc)
        self.model = model.eval()
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        logger.info(
            "Loaded %s (%s, %s) in %.2f s: %.2f GiB of weights on %s",
            mc.model,
            mc.architecture,
            mc.dtype,
            time.perf_counter() - start,
            weight_bytes / GiB,
            self.device,
        )

    def plan_kv_cache(self) -> KVCachePlan:
        cache = self.config.cache_config
        budget = cache.kv_cache_memory_bytes
        if budget is None:
            raise ValueError(
                "Sizing the KV cache from gpu_memory_utilization is not built yet; pass "
                "kv_cache_memory_bytes (e.g. kv_cache_memory_bytes='8G')."
            )
        return plan_kv_cache(self.model_config, cache, budget, f"kv_cache_memory_bytes={budget}")

    def initialize_kv_cache(self, plan: KVCachePlan) -> None:
        self.kv_caches = allocate_kv_caches(self.model_config, plan, self.dtype, self.device)

    # -- one step ------------------------------------------------------------------------

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(scheduler_output)
        if scheduler_output.is_empty:
            return ModelRunnerOutput([], [])
        assert self.model is not None, "load_model() first"
        batch = build_step_batch(scheduler_output, self.requests, self.block_size, self.device)
        ctx = ForwardContext(self.backend, self.backend.build_metadata(batch.attn), self.kv_caches)
        hidden = self.model(batch.input_ids, batch.positions, ctx)
        num_reqs = len(batch.req_ids)
        sampled: list[list[int]] = [[] for _ in range(num_reqs)]
        logprobs: list[LogprobsLists | None] = [None] * num_reqs
        if batch.sampled_req_indices:
            tokens, token_logprobs = self._sample(hidden, batch)
            for row, req_index in enumerate(batch.sampled_req_indices):
                self.requests[batch.req_ids[req_index]].token_ids.append(tokens[row])
                sampled[req_index] = [tokens[row]]
                logprobs[req_index] = token_logprobs[row] if token_logprobs else None
        prompt_logprobs = self._prompt_logprobs(hidden, batch)
        return ModelRunnerOutput(
            batch.req_ids,
            sampled,
            logprobs if any(lp is not None for lp in logprobs) else None,
            prompt_logprobs,
        )

    def _sample(
        self, hidden: torch.Tensor, batch: StepBatch
    ) -> tuple[list[int], list[LogprobsLists] | None]:
        assert self.model is not None
        logits = self.model.compute_logits(hidden.index_select(0, batch.logits_indices))
        states = [self.requests[batch.req_ids[i]] for i in batch.sampled_req_indices]
        metadata = build_sampling_metadata(states, logits.shape[-1], self.device)
        out = self.sampler(logits, metadata)
        tokens = out.token_ids.tolist()  # the step's one host-device synchronisation
        if out.logprobs is None:
            return tokens, None
        vocab = logits.shape[-1]
        ks = [_num_logprobs(s.sampling_params.logprobs, vocab) for s in states]
        return tokens, out.logprobs.to_lists(tokens, ks)

    def _prompt_logprobs(self, hidden: torch.Tensor, batch: StepBatch) -> list | None:
        """Logprobs of the prompt tokens this step's chunks predict (position p's logits
        score token p + 1), for requests that asked for prompt_logprobs."""
        assert self.model is not None
        found: list[LogprobsLists | None] = [None] * len(batch.req_ids)
        starts = batch.attn.query_start_loc_cpu
        for i, req_id in enumerate(batch.req_ids):
            state = self.requests[req_id]
            k = state.sampling_params.prompt_logprobs
            first = state.num_computed_tokens
            last = min(first + starts[i + 1] - starts[i], state.num_prompt_tokens - 1)
            if k is None or last <= first:
                continue
            rows = torch.arange(starts[i], starts[i] + last - first, device=self.device)
            logits = self.model.compute_logits(hidden.index_select(0, rows))
            targets = state.prompt_token_ids[first + 1 : last + 1]
            vocab = logits.shape[-1]
            chosen = torch.tensor(targets, dtype=torch.int64, device=self.device)
            per_position = compute_logprobs(logits, chosen, _num_logprobs(k, vocab))
            lists = per_position.to_lists(targets, [_num_logprobs(k, vocab)] * len(targets))
            found[i] = LogprobsLists(
                [x.token_ids[0] for x in lists],
                [x.logprobs[0] for x in lists],
                [x.ranks[0] for x in lists],
            )
        return found if any(f is not None for f in found) else None

    def _update_states(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self.requests.pop(req_id, None)
        for new in so.scheduled_new_reqs:
            self.requests[new.req_id] = RequestState.create(
                new.req_id,
                new.prompt_token_ids,
                new.sampling_params,
                new.block_ids,
                new.num_computed_tokens,
                self.device,
            )
        for cached in so.scheduled_cached_reqs:
            state = self.requests[cached.req_id]
            if cached.resumed_from_preemption:
                state.block_ids = list(cached.new_block_ids)
            else:
                state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens


def _num_logprobs(asked: int | None, vocab_size: int) -> int:
    """Top-k size for a request: -1 means the whole vocabulary, None none."""
    if asked is None:
        return 0
    return vocab_size if asked == -1 else asked
