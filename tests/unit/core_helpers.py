"""Shared fakes for the torch-free core tests: requests, a KV-checking fake runner, a driver.

The fake runner plays the model runner's part of the step protocol on a simulated KV cache.
It builds its block tables and token lists only from what ``SchedulerOutput`` tells it, writes
a fingerprint of each computed token's prefix into that token's slot, and then checks that
every position a scheduled request attends to holds the fingerprint of the request's own
prefix. A block handed to two requests by mistake, a prefix-cache hit on a block whose KV was
never written, or a block table that drifts from the manager's all fail that check.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager, cdiv
from pagedllm.core.request import FinishReason, Request
from pagedllm.core.scheduler import Scheduler
from pagedllm.core.scheduler_output import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from pagedllm.sampling_params import SamplingParams

EOS = 2  # fake_token never returns it, so runs end by length unless a test says otherwise

_arrival = itertools.count()


def fake_token(request_id: str, position: int) -> int:
    """The token the fake model samples at ``position``: a pure function of its arguments."""
    return 1000 + zlib.crc32(f"{request_id}:{position}".encode()) % 50_000


def expected_output(request_id: str, prompt_len: int, max_tokens: int) -> list[int]:
    """What a request generates when it runs to its length cap under the fake model."""
    return [fake_token(request_id, p) for p in range(prompt_len, prompt_len + max_tokens)]


def make_request(
    request_id: str,
    prompt: list[int] | int,
    max_tokens: int = 8,
    *,
    eos: int | None = EOS,
    priority: int = 0,
    arrival_time: float | None = None,
    cache_salt: str | None = None,
    **params: Any,
) -> Request:
    """A request; an int ``prompt`` means that many distinct tokens derived from the id.

    Arrival times default to a global counter, so creation order is arrival order.
    """
    if isinstance(prompt, int):
        prompt = [fake_token("prompt-" + request_id, p) for p in range(prompt)]
    if arrival_time is None:
        arrival_time = float(next(_arrival))
    sampling_params = SamplingParams(max_tokens=max_tokens, **params)
    return Request(request_id, prompt, sampling_params, eos, arrival_time, priority, cache_salt)


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    *,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 32,
    enable_chunked_prefill: bool = True,
    policy: str = "fcfs",
    long_prefill_token_threshold: int = 0,
    enable_caching: bool = True,
    max_model_len: int = 4096,
    num_host_blocks: int = 0,
    preemption_mode: str = "recompute",
    save_ahead_blocks: int = 0,
    step_time_target: float = 0.0,
) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        enable_chunked_prefill=enable_chunked_prefill,
        policy=policy,
        long_prefill_token_threshold=long_prefill_token_threshold,
        preemption_mode=preemption_mode,
        step_time_target=step_time_target,
    )
    kv = KVCacheManager(num_blocks, block_size, enable_caching, num_host_blocks, save_ahead_blocks)
    return Scheduler(config, kv, max_model_len)


class FakeRunner:
    """Executes ``SchedulerOutput``s on a simulated KV cache; see the module docstring."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        # Request ids whose sampling raises (a step that samples one of them fails).
        self.poisoned: set[str] = set()
        self.block_size = scheduler.kv.block_size
        self.tables: dict[str, list[int]] = {}
        self.tokens: dict[str, list[int]] = {}
        # fingerprints[rid][p]: identity of the request's tokens [0, p]; equal prefixes agree.
        self.fingerprints: dict[str, list[int]] = {}
        self.computed: dict[str, int] = {}
        # slot (block_id * block_size + offset) -> fingerprint of the prefix written there
        self.slots: dict[int, int] = {}
        # The host tier: (host slot, offset) -> fingerprint copied there.
        self.host: dict[tuple[int, int], int | None] = {}
        self.num_swapped_in = 0
        self.num_saved_ahead = 0
        self.written: set[int] = set()  # the blocks the current step writes

    def execute(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self._check_limits(so)
        self._copy_host_tier(so)
        for rid in so.finished_req_ids:
            for state in (self.tables, self.tokens, self.fingerprints, self.computed):
                state.pop(rid, None)
        self._take_new(so)
        self._take_cached(so)
        order = [r.req_id for r in so.scheduled_new_reqs] + [
            r.req_id for r in so.scheduled_cached_reqs
        ]
        # As in one forward pass: every new K/V is written before any attention reads.
        self.written.clear()
        for rid in order:
            self._write(rid, so.num_scheduled_tokens[rid])
        for rid in order:
            self._check_reads(rid, so.num_scheduled_tokens[rid])
        self._save_ahead(so)
        return self._sample(order, so)

    # -- protocol ------------------------------------------------------------------------

    def _check_limits(self, so: SchedulerOutput) -> None:
        config = self.scheduler.config
        counts = so.num_scheduled_tokens
        assert so.total_num_scheduled_tokens == sum(counts.values())
        assert so.total_num_scheduled_tokens <= config.max_num_batched_tokens
        assert len(counts) <= config.max_num_seqs
        assert len(self.scheduler.running) <= config.max_num_seqs
        assert all(n > 0 for n in counts.values())
        listed = [r.req_id for r in so.scheduled_new_reqs] + [
            r.req_id for r in so.scheduled_cached_reqs
        ]
        assert sorted(listed) == sorted(counts), "every scheduled request is listed once"
        assert not (so.preempted_req_ids & set(counts)), "a preempted request was scheduled"

    def _take_new(self, so: SchedulerOutput) -> None:
        for new in so.scheduled_new_reqs:
            assert new.req_id not in self.tables, f"{new.req_id} sent as new twice"
            assert new.num_computed_tokens % self.block_size == 0, "hits are whole blocks"
            known = len(new.prompt_token_ids) + len(new.output_token_ids)
            assert new.num_computed_tokens < known, "last token computed"
            self.tables[new.req_id] = list(new.block_ids)
            self.tokens[new.req_id] = list(new.prompt_token_ids) + list(new.output_token_ids)
            self.fingerprints[new.req_id] = []
            self.computed[new.req_id] = new.num_computed_tokens
            if not self.scheduler.config.enable_chunked_prefill:
                n = so.num_scheduled_tokens[new.req_id]
                assert n == len(new.prompt_token_ids) - new.num_computed_tokens, "chunked"

    def _take_cached(self, so: SchedulerOutput) -> None:
        for cached in so.scheduled_cached_reqs:
            rid = cached.req_id
            assert rid in self.tables, f"{rid} scheduled as cached but never sent as new"
            if cached.resumed_from_preemption:
                assert cached.num_computed_tokens % self.block_size == 0
                assert cached.num_computed_tokens < len(self.tokens[rid])
                self.tables[rid] = list(cached.new_block_ids)
            else:
                assert cached.num_computed_tokens == self.computed[rid], "progress drifted"
                self.tables[rid].extend(cached.new_block_ids)
            self.computed[rid] = cached.num_computed_tokens

    def _copy_host_tier(self, so: SchedulerOutput) -> None:
        """As the worker: every swap-out, then every swap-in, before the forward pass. A
        swap-in of a slot holding another prefix's KV fails the reads' check later (a slot
        saved and read in the same step is fine: the save runs first)."""
        targets = [slot for _, slot in so.kv_swap_out]
        assert len(set(targets)) == len(targets), "two swap-outs into one host slot"
        bs = self.block_size
        for block, slot in so.kv_swap_out:
            for offset in range(bs):
                self.host[slot, offset] = self.slots.get(block * bs + offset)
        for slot, block in so.kv_swap_in:
            for offset in range(bs):
                assert (slot, offset) in self.host, f"host slot {slot} read before written"
                print_ = self.host[slot, offset]
                if print_ is None:
                    self.slots.pop(block * bs + offset, None)
                else:
                    self.slots[block * bs + offset] = print_
            self.num_swapped_in += 1

    def _save_ahead(self, so: SchedulerOutput) -> None:
        """As the worker: saves ahead run beside the forward pass, so they copy the blocks
        after the step's writes (a block the step wrote would be saved with the wrong KV
        and fail a later read), and no block the step takes or writes may be among them."""
        touched = {b for b, _ in so.kv_swap_out} | {b for _, b in so.kv_swap_in} | self.written
        saved = {b for b, _ in so.kv_save_ahead}
        assert not saved & touched, f"blocks {saved & touched} saved ahead in their step"
        targets = [s for _, s in so.kv_swap_out] + [s for _, s in so.kv_save_ahead]
        assert len(set(targets)) == len(targets), "two copies into one host slot"
        read = {slot for slot, _ in so.kv_swap_in}
        assert not read & {s for _, s in so.kv_save_ahead}, "a slot saved and read in a step"
        for block, slot in so.kv_save_ahead:
            for offset in range(self.block_size):
                self.host[slot, offset] = self.slots.get(block * self.block_size + offset)
        self.num_saved_ahead += len(so.kv_save_ahead)

    # -- simulated KV --------------------------------------------------------------------

    def _fingerprint(self, rid: str, position: int) -> int:
        prints, tokens = self.fingerprints[rid], self.tokens[rid]
        while len(prints) <= position:
            parent = prints[-1] if prints else 0
            prints.append(hash((parent, tokens[len(prints)])))
        return prints[position]

    def _slot(self, rid: str, position: int) -> int:
        table = self.tables[rid]
        index = position // self.block_size
        assert index < len(table), f"{rid}: position {position} is past its block table"
        return table[index] * self.block_size + position % self.block_size

    def _write(self, rid: str, num_tokens: int) -> None:
        start = self.computed[rid]
        end = start + num_tokens
        assert end <= len(self.tokens[rid]), f"{rid}: scheduled past its known tokens"
        # Exactly the blocks the computed tokens need: no more, no fewer.
        assert len(self.tables[rid]) == cdiv(end, self.block_size), f"{rid}: block table size"
        assert self.tables[rid] == self.scheduler.kv.get_block_ids(rid), "table drifted"
        for position in range(start, end):
            slot = self._slot(rid, position)
            self.slots[slot] = self._fingerprint(rid, position)
            self.written.add(slot // self.block_size)

    def _check_reads(self, rid: str, num_tokens: int) -> None:
        end = self.computed[rid] + num_tokens
        for position in range(end):
            found = self.slots.get(self._slot(rid, position))
            assert found == self._fingerprint(rid, position), (
                f"{rid}: KV at position {position} is not this request's"
            )

    def _sample(self, order: list[str], so: SchedulerOutput) -> ModelRunnerOutput:
        sampled = []
        for rid in order:
            end = self.computed[rid] + so.num_scheduled_tokens[rid]
            self.computed[rid] = end
            request = self.scheduler.requests[rid]
            assert request.num_computed_tokens == end
            assert request.num_tokens == len(self.tokens[rid])
            if end == len(self.tokens[rid]):
                if rid in self.poisoned:
                    raise RuntimeError(f"poisoned request {rid}")
                token = fake_token(rid, end)
                self.tokens[rid].append(token)
                sampled.append([token])
            else:
                sampled.append([])
        return ModelRunnerOutput(req_ids=order, sampled_token_ids=sampled)


@dataclass
class Harness:
    """A scheduler stepped with a fake runner, collecting what each request produced."""

    scheduler: Scheduler
    runner: FakeRunner = field(init=False)
    outputs: dict[str, list[int]] = field(default_factory=dict)
    finish_reasons: dict[str, FinishReason | None] = field(default_factory=dict)
    history: list[SchedulerOutput] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runner = FakeRunner(self.scheduler)

    def add(self, *requests: Request) -> None:
        for request in requests:
            self.scheduler.add_request(request)
            self.outputs[request.request_id] = []

    def step(self) -> tuple[SchedulerOutput, list[EngineCoreOutput]]:
        """One step; a runner failure goes to the scheduler as the engine core sends it."""
        so = self.scheduler.schedule()
        try:
            out = self.runner.execute(so)
        except RuntimeError as exc:
            core_outputs = self.scheduler.fail_step(so, str(exc))
        else:
            core_outputs = self.scheduler.update_from_output(so, out)
        for o in core_outputs:
            self.outputs[o.request_id].extend(o.new_token_ids)
            if o.finished:
                self.finish_reasons[o.request_id] = o.finish_reason
        self.scheduler.kv.check_integrity()
        self.history.append(so)
        return so, core_outputs

    def run(self, max_steps: int = 5_000) -> int:
        """Step until no request is left; fail (a deadlock) past ``max_steps``."""
        steps = 0
        while self.scheduler.has_unfinished_requests():
            assert steps < max_steps, f"no progress after {steps} steps: {self.scheduler.running}"
            self.step()
            steps += 1
        return steps

    def assert_all_blocks_free(self) -> None:
        pool = self.scheduler.kv.block_pool
        pool.check_integrity()
        assert pool.get_num_free_blocks() == pool.num_blocks
        assert not self.scheduler.kv.req_to_blocks
