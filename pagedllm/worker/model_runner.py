"""The model runner: loads the model, owns the KV cache, runs one step.

Each step: update per-request state from the scheduler's plan, build the flat batch, run
the model, compute logits only where a token is sampled, sample, and report the tokens.
The one host-device synchronisation of a step is reading the sampled ids back, which the
engine may defer until the next step is queued (async scheduling).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from operator import attrgetter

import torch

from pagedllm.attention.backend import create_backend
from pagedllm.config import EngineConfig, ParallelConfig, check_host_memory
from pagedllm.core.scheduler_output import LogprobsLists, ModelRunnerOutput, SchedulerOutput
from pagedllm.distributed.parallel_state import ModelParallel
from pagedllm.executor.errors import HostTierError
from pagedllm.logger import init_logger
from pagedllm.model.cpu_decode import CpuDecodeStack
from pagedllm.model.decoder import CausalLM, ForwardContext
from pagedllm.model.layers.fp8_linear import log_fp8_layers
from pagedllm.model.layers.gguf_blocks import keeps_blocks, log_stored_layers
from pagedllm.model.loader import load_weights_into
from pagedllm.model.registry import build_model
from pagedllm.model.sharding import ShardPlan
from pagedllm.sample.grammar_mask import GrammarBitmask, apply_grammar_bitmask
from pagedllm.sample.logprobs import compute_logprobs
from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.sampler import Sampler
from pagedllm.worker.block_table import BlockTable
from pagedllm.worker.cuda_graphs import MIXED_SIZES, CudaGraphs, capture_sizes
from pagedllm.worker.host_kv_cache import STAGING_BYTES, HostKVCache, LayerLoads
from pagedllm.worker.input_batch import HostBatch, StepBatch, build_host_batch
from pagedllm.worker.input_buffers import InputBuffers
from pagedllm.worker.kv_cache import (
    GiB,
    KVCachePlan,
    allocate_kv_caches,
    kv_cache_dtype,
    plan_kv_cache,
)
from pagedllm.worker.memory_profile import GRAPH_RESERVE, profile_peak_activations
from pagedllm.worker.penalty_state import PenaltyState
from pagedllm.worker.request_state import RequestState
from pagedllm.worker.sampling_inputs import build_sampling_metadata
from pagedllm.worker.stage_io import StageIO
from pagedllm.worker.step_output import LaunchedStep, SampledOnDevice
from pagedllm.worker.step_plan import eager_step_batch, plan_step

logger = init_logger(__name__)


class ModelRunner:
    """One rank's runner. ``parallel`` (None: the whole model, this process) places it in
    the tensor x pipeline grid; every rank gets the same scheduler outputs, keeps the same
    request states and block tables, and holds its share of the weights and KV cache.

    Only ranks of the last pipeline stage sample (all of its TP ranks, from the same
    gathered logits, to the same tokens); the tokens are broadcast to the other stages."""

    def __init__(self, config: EngineConfig, parallel: ModelParallel | None = None) -> None:
        self.config = config
        self.parallel = parallel
        # Pipeline hand-offs (None without pipeline parallelism: nothing to send or wait for).
        self.stage_io: StageIO | None = None
        if parallel is not None and parallel.pp_size > 1:
            mc = config.model_config
            dtype = getattr(torch, mc.dtype)
            self.stage_io = StageIO(parallel, mc.text_config.hidden_size, dtype)
        self.samples = parallel is None or parallel.is_last_stage
        self.model_config = config.model_config
        self.device = torch.device(config.device)
        self.dtype: torch.dtype = getattr(torch, self.model_config.dtype)
        self.block_size = config.cache_config.block_size
        self.kv_cache_dtype = kv_cache_dtype(config.cache_config, self.dtype, self.device)
        # calculate_kv_scales: the next step with tokens sets the FP8 cache's scales.
        self._kv_scales_pending = config.cache_config.calculate_kv_scales
        self.backend = create_backend(config.device)
        self.sampler = Sampler(self.model_config.seed)
        self.requests: dict[str, RequestState] = {}
        self.block_table = BlockTable()  # the block ids of every request in self.requests
        self.kv_caches: list[torch.Tensor] = []
        self.host_kv: HostKVCache | None = None  # the swap_space tier's memory
        self.model: CausalLM | None = None
        self.buffers: InputBuffers | None = None  # CUDA: persistent step inputs
        self.penalties: PenaltyState | None = None
        self.graphs: CudaGraphs | None = None
        # The last step's sampling metadata and what it was built for (the sampled rows'
        # ids, and the batch version then): reused while both hold.
        self._batch_version = 0
        self._last_sampling: tuple[tuple[str, ...], int, SamplingMetadata] | None = None
        # The last step's sampled ids on the device: the inputs of its decodes' next step.
        self._last_sampled: torch.Tensor | None = None
        if self.device.type == "cpu":
            self._set_cpu_threads(config.parallel_config)
        torch.manual_seed(self.model_config.seed)

    def _set_cpu_threads(self, parallel_config: ParallelConfig) -> None:
        """Bind this process to its rank's CPUs (VLLM_CPU_OMP_THREADS_BIND) before torch's
        pool starts threads, which inherit the binding; then size the pool."""
        threads = parallel_config.cpu_threads
        if parallel_config.cpu_binding is not None:
            rank = self.parallel.rank if self.parallel is not None else 0
            cpus = parallel_config.cpu_binding[rank]
            os.sched_setaffinity(0, cpus)
            threads = threads or len(cpus)
        if threads is not None:
            torch.set_num_threads(threads)

    # -- start-up ------------------------------------------------------------------------

    def load_model(self) -> None:
        start = time.perf_counter()
        mc = self.model_config
        one_rank = self.parallel is None or self.parallel.world_size == 1
        blocks = keeps_blocks(mc, self.device, one_rank)
        model = build_model(
            mc.architecture, mc.hf_config, self.dtype, self.device, mc.quantization,
            self.parallel, gguf_blocks=blocks,
        )  # fmt: skip
        if self.device.type == "cpu":
            self._check_weights_fit(model, blocks)
        load_weights_into(model, mc, blocks)
        log_fp8_layers(model)
        if blocks:
            log_stored_layers(model)
            model.model.cpu_decode = CpuDecodeStack.build(model)
            logger.info("Decode steps: %s", "every layer in C++" if model.model.cpu_decode
                        else "the layers' modules")  # fmt: skip
        self._log_kv_scales(model)
        self.model = model.eval()
        weight_bytes = self.weight_bytes()
        logger.info(
            "Loaded %s (%s, %s) in %.2f s: %.2f GiB of weights on %s",
            mc.model,
            mc.architecture,
            mc.dtype,
            time.perf_counter() - start,
            weight_bytes / GiB,
            self.device,
        )

    def _check_weights_fit(self, model: CausalLM, blocks: bool) -> None:
        """On the CPU, before any weight is written: the built model's tensors are not yet
        touched (no memory taken), so loading a model larger than the host's free memory
        would end in the kernel's out-of-memory kill minutes later (a 7B model in float32
        on a 22 GiB host: 6.5 minutes, then a bare "exited (code -9)"). The ranks of one
        host load at once, each its share. A model built for a GGUF file's blocks has
        empty placeholders until it loads: the file's tensor table sizes it instead."""
        weight_bytes = self._stored_gguf_bytes() if blocks else _parameter_bytes(model)
        parallel = self.config.parallel_config
        ranks = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
        if parallel.distributed_executor_backend == "ray":
            ranks = 1  # its ranks may be on other hosts
        check_host_memory(
            weight_bytes * ranks,
            f"Loading the model's weights in {self.model_config.dtype} on the CPU"
            + (f" ({ranks} ranks)" if ranks > 1 else ""),
            "Pass --dtype bfloat16 (half of float32), a quantized GGUF or a smaller model.",
            warn=False,
        )

    def _stored_gguf_bytes(self) -> int:
        from pagedllm.model.loader.gguf_weights import held_bytes

        files = self.model_config.files
        assert files.gguf_file is not None, "GGUF blocks need a GGUF file"
        return held_bytes(files.gguf_file, files.config_dir, self.dtype.itemsize)

    def _log_kv_scales(self, model: CausalLM) -> None:
        if self.kv_cache_dtype == self.dtype:
            return
        scales = torch.stack([layer.self_attn.kv_scale for layer in model.model.stage_layers])
        name = self.config.cache_config.cache_dtype
        if self._kv_scales_pending:
            logger.info("KV cache in %s; its K and V scales come from the first step", name)
        elif bool((scales == 1.0).all()):
            logger.warning(
                "KV cache in %s with K and V scales of 1.0 (the checkpoint has none): values "
                "beyond the format's range saturate. calculate_kv_scales=True derives them "
                "from the first step.", name,
            )  # fmt: skip
        else:
            logger.info(
                "KV cache in %s with the checkpoint's scales (K %.3g-%.3g, V %.3g-%.3g)", name,
                scales[:, 0].min(), scales[:, 0].max(), scales[:, 1].min(), scales[:, 1].max(),
            )  # fmt: skip

    def plan_kv_cache(self) -> KVCachePlan:
        cache = self.config.cache_config
        budget = cache.kv_cache_memory_bytes
        if budget is not None:
            where = f"kv_cache_memory_bytes={budget}"
        elif self.device.type == "cuda":
            budget, where = self._gpu_kv_budget()
        else:
            raise ValueError("kv_cache_memory_bytes is required off the GPU.")
        return plan_kv_cache(self.model_config, cache, budget, where, self.kv_bytes_per_token())

    def kv_bytes_per_token(self) -> int:
        """This rank's: its KV heads of its stage's layers (the whole model's on one rank)."""
        mc, plan = self.model_config, self._shard_plan()
        per_token = mc.kv_bytes_per_token(self.config.cache_config.cache_dtype)
        if plan is None:
            return per_token
        return (
            per_token // (mc.num_layers * mc.num_kv_heads) * (len(plan.layers) * plan.num_kv_heads)
        )

    def _shard_plan(self) -> ShardPlan | None:
        assert self.model is not None, "load_model() first"
        return self.model.plan

    def weight_bytes(self) -> int:
        """Bytes of this rank's weights on the device."""
        assert self.model is not None
        return _parameter_bytes(self.model)

    def decode_read_bytes(self) -> int:
        """Weight bytes one decode step reads on this rank: all but the embedding table, of
        which it reads a row per token (unless the LM head shares it)."""
        model = self.model
        assert model is not None
        embedding = model.model.embed_tokens
        head = model.lm_head
        if embedding is None or (head is not None and embedding.weight is head.weight):
            return self.weight_bytes()
        return self.weight_bytes() - embedding.weight.numel() * embedding.weight.element_size()

    def shutdown(self) -> None:
        """Nothing to stop: the runner is this process (the uniprocess executor)."""

    def _gpu_kv_budget(self) -> tuple[int, str]:
        """gpu_memory_utilization x total - weights - peak activations - memory outside torch
        (CUDA context) - room for CUDA graphs - the host tier's staging buffers."""
        assert self.model is not None
        util = self.config.cache_config.gpu_memory_utilization
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        weights = torch.cuda.memory_allocated()
        activations = profile_peak_activations(self)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        outside_torch = (total - free) - torch.cuda.memory_reserved()
        graphs = 0 if self.config.enforce_eager else GRAPH_RESERVE
        # The host tier's staging buffers (``HostKVCache``), allocated after the cache.
        staging = 2 * STAGING_BYTES if self.config.cache_config.swap_space_bytes else 0
        budget = int(util * total) - weights - activations - outside_torch - graphs - staging
        logger.info(
            "GPU memory: %.2f GiB total x %.2f = %.2f GiB; weights %.2f GiB, peak activations "
            "%.2f GiB, outside torch %.2f GiB, CUDA graphs %.2f GiB, host tier staging %.2f "
            "GiB -> %.2f GiB for the KV cache",
            total / GiB, util, util * total / GiB, weights / GiB, activations / GiB,
            outside_torch / GiB, graphs / GiB, staging / GiB, max(budget, 0) / GiB,
        )  # fmt: skip
        where = (
            f"gpu_memory_utilization={util} of {total / GiB:.1f} GiB, after "
            f"{weights / GiB:.2f} GiB of weights and {activations / GiB:.2f} GiB of activations"
        )
        return max(budget, 0), where

    def initialize_kv_cache(self, plan: KVCachePlan) -> None:
        cuda = self.device.type == "cuda"
        # On CUDA one extra block past the pool's is scratch space for padded tokens.
        shard = self._shard_plan()
        self.kv_caches = allocate_kv_caches(
            self.model_config, plan, self.kv_cache_dtype, self.device, extra_blocks=int(cuda),
            num_kv_heads=shard.num_kv_heads if shard is not None else None,
            layers=shard.layers if shard is not None else None,
        )  # fmt: skip
        if plan.num_host_blocks:
            self.host_kv = HostKVCache(self.kv_caches, plan.num_host_blocks)
        if not cuda:
            return
        sched = self.config.scheduler_config
        # Rows wide enough for a max_model_len context, and for the padding request of the
        # largest mixed CUDA graph (whose table points every entry at the scratch block).
        longest = max(self.model_config.max_model_len, max(MIXED_SIZES))
        max_blocks = -(-longest // self.block_size)
        self.buffers = InputBuffers(
            sched.max_num_batched_tokens,
            sched.max_num_seqs + 1,  # + the padding request of mixed CUDA graphs
            max_blocks,
            self.block_size,
            plan.num_blocks,
            self.device,
        )
        if not self.config.enforce_eager:
            assert self.model is not None
            sizes = capture_sizes(
                sched.max_num_seqs,
                self.config.cudagraph_capture_sizes,
                self.config.max_cudagraph_capture_size,
            )
            self.graphs = CudaGraphs(
                self.model, self.backend, self.buffers, self.kv_caches,
                sched.max_num_seqs, self.model_config.num_kv_heads, sizes,
            )  # fmt: skip
            self.graphs.capture()

    @torch.inference_mode()
    def execute_model(
        self,
        scheduler_output: SchedulerOutput,
        grammar_bitmask: Callable[[list[str]], GrammarBitmask | None] | None = None,
    ) -> LaunchedStep:
        """Queue one step on the device; ``resolve(launched)`` reads its tokens.
        ``grammar_bitmask`` (structured outputs) is called with the sampled rows' request
        ids after the forward pass is launched, so the host fills the bitmask while the
        device computes."""
        if self.host_kv is not None:
            self.host_kv.wait_saves()
        loads = self._copy_host_tier(scheduler_output)
        self.update_states(scheduler_output)
        if scheduler_output.is_empty:
            if loads is not None:
                loads.wait_all()
            return LaunchedStep.empty()
        assert self.model is not None, "load_model() first"
        host, states, metadata = self.host_inputs(scheduler_output)
        hidden, batch = self._forward(host, loads)
        if not self.samples:
            return self._pass_on(hidden, batch, states)
        sampled = None
        if metadata is not None:
            mask = grammar_bitmask([s.req_id for s in states]) if grammar_bitmask else None
            sampled = self._sample(hidden, states, batch, metadata, mask)
            if self.stage_io is not None:
                self.stage_io.share_tokens(sampled.device_token_ids)
            self._last_sampled = sampled.device_token_ids
            mark_pending(states)
        prompt_logprobs = self._prompt_logprobs(hidden, batch, host)
        return LaunchedStep(
            batch.req_ids, batch.sampled_req_indices, states, sampled, prompt_logprobs
        )

    def host_inputs(
        self, so: SchedulerOutput
    ) -> tuple[HostBatch, list[RequestState], SamplingMetadata | None]:
        """The step's batch on the host, its sampled rows' states and their sampling
        metadata (None when nothing is sampled here). Sampling inputs are built (and
        copied, asynchronously) before the forward pass is launched, so the step's only
        wait for the GPU is reading the sampled tokens back."""
        host = build_host_batch(so, self.requests, self.block_table, self.block_size)
        host.fill_from = self._last_sampled
        sampled_ids = map(host.req_ids.__getitem__, host.sampled_req_indices)
        states = list(map(self.requests.__getitem__, sampled_ids))
        metadata = None
        if states and self.samples:
            metadata = self._sampling_metadata(states)
        return host, states, metadata

    def _copy_host_tier(self, so: SchedulerOutput) -> LayerLoads | None:
        """The step's host-tier copies, first of all: swap-outs save blocks this step's
        forward pass overwrites, then swap-ins fill blocks it reads (with CUDA still running
        when this returns: the forward pass waits on the loads layer by layer), and saves
        ahead start beside it. A failure here leaves the tier's contents unknown to the
        scheduler, so it stops the engine rather than being blamed on a request."""
        if not (so.kv_swap_out or so.kv_swap_in or so.kv_save_ahead):
            return None
        if self.host_kv is None:
            raise HostTierError("host-tier copies scheduled, but this rank has no swap space")
        try:
            self.host_kv.swap_out(so.kv_swap_out)
            loads = self.host_kv.swap_in(so.kv_swap_in)
            self.host_kv.save_ahead(so.kv_save_ahead)
        except Exception as exc:
            raise HostTierError(f"a host-tier copy failed: {type(exc).__name__}: {exc}") from exc
        return loads

    def _pass_on(
        self, hidden: torch.Tensor, batch: StepBatch, states: list[RequestState]
    ) -> LaunchedStep:
        """A stage before the last: hand the activations on, then take the step's sampled
        tokens from the last stage (the next step's inputs), without logprobs."""
        assert self.stage_io is not None
        self.stage_io.send_activations(hidden)
        sampled = None
        if states:
            tokens = self.stage_io.receive_tokens(len(states))
            sampled = SampledOnDevice(tokens, tokens, None, [0] * len(states), None)
            self._last_sampled = tokens
            mark_pending(states)
        return LaunchedStep(batch.req_ids, batch.sampled_req_indices, states, sampled, None)

    def launch_blocks(self, scheduler_output: SchedulerOutput) -> bool:
        """On CUDA, a step of more tokens than the largest CUDA graph runs eagerly, and its
        launch holds the host for about the step's device time (measured inside cuBLAS'
        calls: benchmarks/RESULTS.md, "where the long prefill steps come from" and "after
        the held launch"). Such a step runs long enough that resolving the step in flight
        first costs the device only this step's input preparation."""
        eager = scheduler_output.total_num_scheduled_tokens > max(MIXED_SIZES)
        return eager and self.device.type == "cuda"

    def resolve(self, launched: LaunchedStep) -> ModelRunnerOutput:
        """Wait for a launched step's tokens, record them in the request states (a state
        may be gone from ``self.requests`` by now, finished meanwhile: harmless), and
        report them."""
        output, tokens = launched.resolve()
        for state, token in zip(launched.states, tokens):
            state.token_ids.append(token)
            state.num_pending -= 1
        return output

    def _forward(
        self, host: HostBatch, loads: LayerLoads | None = None
    ) -> tuple[torch.Tensor, StepBatch]:
        """Run the model on the batch: a CUDA graph when one fits it, else eagerly.
        ``loads``: blocks still being copied in from the host tier. Such a step runs
        eagerly, each layer waiting for its own blocks, so the copy overlaps the layers
        before (a graph's replay would wait for all of it first)."""
        assert self.model is not None
        # The step that sets the KV scales runs eagerly (a graph would replay fixed scales).
        calculate_kv_scales, self._kv_scales_pending = self._kv_scales_pending, False
        if self.graphs is not None and not calculate_kv_scales and loads is None:
            replayed = self.graphs.run(host)
            if replayed is not None:
                return replayed
        segments = self.backend.segments_for(
            host.num_reqs, host.max_query_len, self.model_config.num_kv_heads
        )
        plan = plan_step(host, segments)
        if self.buffers is None:
            batch = eager_step_batch(host, plan, self.device)
        else:
            batch = self.buffers.load(host, plan)
        ctx = ForwardContext(self.backend, self.backend.build_metadata(batch.attn), self.kv_caches)
        ctx.calculate_kv_scales = calculate_kv_scales
        ctx.kv_loads = loads
        try:
            if self.stage_io is not None:
                ctx.intermediate = self.stage_io.receive_activations(batch.input_ids.shape[0])
            hidden = self.model(batch.input_ids, batch.positions, ctx)
        finally:
            # What follows on the stream sees every loaded block. Also when the forward pass
            # failed: the copy engines' layers are queued only as it reaches them, and the
            # blocks stay registered as cached whether or not this step ran to its end.
            if loads is not None:
                loads.wait_all()
        return hidden, batch

    def _sample(
        self,
        hidden: torch.Tensor,
        states: list[RequestState],
        batch: StepBatch,
        metadata: SamplingMetadata,
        mask: GrammarBitmask | None,
    ) -> SampledOnDevice:
        assert self.model is not None
        logits = self.model.compute_logits(hidden.index_select(0, batch.logits_indices))
        if mask is not None:
            # Before the sampler, so logprobs too see only what the grammar allows (vLLM).
            logits = logits.float()
            apply_grammar_bitmask(logits, mask)
        out = self.sampler(logits, metadata)
        penalties = metadata.penalties
        if penalties is not None and penalties.slots is not None:
            # Count the sampled tokens in the runner's tables (slot 0 rows are dropped).
            assert self.penalties is not None
            self.penalties.record(penalties.slots, out.token_ids)
        vocab = logits.shape[-1]
        ks: list[int] = []  # read only with logprobs: not built for every step's rows
        if out.logprobs is not None:
            ks = [_num_logprobs(s.sampling_params.logprobs, vocab) for s in states]
        return SampledOnDevice.start(out, ks)

    def _prompt_logprobs(
        self, hidden: torch.Tensor, batch: StepBatch, host: HostBatch
    ) -> list | None:
        """Logprobs of the prompt tokens this step's chunks predict (position p's logits
        score token p + 1), for requests that asked for prompt_logprobs."""
        assert self.model is not None
        found: list[LogprobsLists | None] = [None] * len(batch.req_ids)
        starts = host.query_start_loc.tolist()
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

    def _sampling_metadata(self, states: list[RequestState]) -> SamplingMetadata:
        """Rebuilt in full when the sampled rows change or any request came or went since
        the last step (a new request may reuse an id, and its penalty slot is new)."""
        rows = tuple(map(_req_id, states))  # per row every step: a C-level getter
        last = self._last_sampling
        previous = last[2] if last and last[:2] == (rows, self._batch_version) else None
        # A reused metadata keeps its penalty inputs: the penalty state exists if needed.
        penalties = self._penalty_state(states) if previous is None else None
        metadata = build_sampling_metadata(
            states, self.model_config.vocab_size, self.device, penalties, previous
        )
        self._last_sampling = (rows, self._batch_version, metadata)
        return metadata

    def _penalty_state(self, states: list[RequestState]) -> PenaltyState | None:
        """Made the first time a request uses a penalty."""
        if self.penalties is None and any(s.sampling_params.uses_penalties for s in states):
            self.penalties = PenaltyState(self.model_config.vocab_size, self.device)
        return self.penalties

    def update_states(self, so: SchedulerOutput) -> None:
        """Take in the scheduler's changes: finished requests go, new ones get a state,
        running ones their new blocks and progress."""
        if so.finished_req_ids or so.scheduled_new_reqs:
            self._batch_version += 1
        for req_id in so.finished_req_ids:
            self._drop_state(req_id)
            if self.penalties is not None:
                self.penalties.release(req_id)
        for new in so.scheduled_new_reqs:
            self._drop_state(new.req_id)  # a state the runner still held under this id
            self.requests[new.req_id] = RequestState.create(
                new.req_id,
                new.prompt_token_ids,
                new.sampling_params,
                self.block_table.add(new.block_ids),
                new.num_computed_tokens,
                self.device,
                new.output_token_ids,
            )
        requests, table = self.requests, self.block_table
        for cached in so.scheduled_cached_reqs:  # every running request, every step
            state = requests[cached.req_id]
            if cached.resumed_from_preemption:
                table.replace(state.block_row, cached.new_block_ids)
            elif cached.new_block_ids:  # a decode takes a block once in block_size steps
                table.extend(state.block_row, cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    def _drop_state(self, req_id: str) -> None:
        state = self.requests.pop(req_id, None)
        if state is not None:
            self.block_table.release(state.block_row)


_req_id = attrgetter("req_id")


def mark_pending(states: list[RequestState]) -> None:
    """Each sampled row's token is in flight until the step resolves; the next step
    reads it from that row of this step's sampled ids."""
    for row, state in enumerate(states):
        state.num_pending += 1
        state.pending_row = row


def _num_logprobs(asked: int | None, vocab_size: int) -> int:
    """Top-k size for a request: -1 means the whole vocabulary, None none."""
    if asked is None:
        return 0
    return vocab_size if asked == -1 else asked


def _parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (tied ones once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
