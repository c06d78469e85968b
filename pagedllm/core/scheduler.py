"""Continuous batching under one token budget per step.

The one accounting rule (docs/architecture.md): each request has ``num_tokens`` and
``num_computed_tokens``; each step gives some requests some tokens to compute, within
``max_num_batched_tokens`` and ``max_num_seqs``. Prefill is catching up in chunks, a decode
computes one token, a prefix-cache hit starts above zero. There is no prefill phase.

Each step: running requests first (in order), then waiting ones, unless a running request
had to be preempted this step (then there is no room to admit anyone). When blocks run out
the lowest-priority (``priority`` policy) or latest (``fcfs``) running request is preempted:
its blocks are freed and it waits again, keeping the tokens it generated. By recompute (the
default), what of its KV stays in the prefix cache is reused and the rest recomputed; with
``preemption_mode="swap"`` its full blocks are first saved in the host tier and pinned there
until it runs again.

With ``step_time_target`` (the server's default), prompt chunks are also sized so that the
step's predicted time (``step_time.py``, fitted to the last steps' measured times) stays
within the target: a long prompt then takes more, shorter steps, and the other requests'
tokens do not wait for its whole chunks.

A waiting request whose next uncached prompt block is one a running request will compute
in a later step (the same prompt's chunks: ``n`` > 1 samples, a resent conversation, a
shared system prompt) waits for it, keeping its place at the head of the queue, and is
admitted once that block is registered: then it hits the cache instead of computing the
same chunks beside its twin. Requests behind it are admitted meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pagedllm import envs
from pagedllm.config import SchedulerConfig
from pagedllm.core.admission import BlockForecast
from pagedllm.core.block_pool import KVCacheBlock
from pagedllm.core.kv_cache_manager import CachedPrefix, KVCacheManager
from pagedllm.core.quarantine import Quarantine
from pagedllm.core.request import ErrorCause, GrammarError, Request, RequestStatus
from pagedllm.core.request_queue import create_request_queue
from pagedllm.core.scheduler_output import (
    CachedRequestData,
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)
from pagedllm.core.step_time import PROBE_CHUNK, StepTimeModel, StepWork, chunk_pairs
from pagedllm.core.stopping import check_stop
from pagedllm.logger import init_logger

logger = init_logger(__name__)

_NO_BLOCKS: tuple[int, ...] = ()  # immutable: shared by every step's decodes
# The fewest tokens a prompt chunk sized by the step's time gets: the prompt always advances,
# even when the step's other work alone is past the target.
_MIN_TIMED_CHUNK = 64
# The share of the step time target a prompt chunk may take in a step already past it.
_PROMPT_SHARE = 0.5


@dataclass
class _StepPlan:
    """What one ``schedule()`` call has decided so far."""

    budget: int
    num_scheduled: dict[str, int] = field(default_factory=dict)
    # Scheduled requests in batch order.
    order: list[Request] = field(default_factory=list)
    new_block_ids: dict[str, Sequence[int]] = field(default_factory=dict)
    first_time: set[str] = field(default_factory=set)
    resumed: set[str] = field(default_factory=set)
    preempted: set[str] = field(default_factory=set)
    # With a step time target: the (query, key) pairs of the step's prompt chunks so far.
    pairs: int = 0

    def add(self, request: Request, num_tokens: int, new_blocks: list[KVCacheBlock]) -> None:
        if num_tokens > 1:  # a chunk (request.num_computed_tokens: before this step)
            self.pairs += chunk_pairs(num_tokens, request.num_computed_tokens)
        self.order.append(request)
        self.num_scheduled[request.request_id] = num_tokens
        # Most decode steps take no block: no list, no comprehension (a call on Python 3.11).
        self.new_block_ids[request.request_id] = (
            [b.block_id for b in new_blocks] if new_blocks else _NO_BLOCKS
        )
        self.budget -= num_tokens

    def drop(self, request: Request) -> None:
        self.order.remove(request)
        num_tokens = self.num_scheduled.pop(request.request_id)
        if num_tokens > 1:
            self.pairs -= chunk_pairs(num_tokens, request.num_computed_tokens)
        self.budget += num_tokens
        self.new_block_ids.pop(request.request_id)


# An admission: (prefix-cache hit tokens, tokens to compute, its blocks, the hits).
_Admission = tuple[int, int, list[KVCacheBlock], CachedPrefix]


class _Wait:
    """The type of ``_WAIT_FOR_TWIN``."""


_WAIT_FOR_TWIN = _Wait()  # a waiting request's next block is being computed by another


class _PendingPrompts:
    """The prompt blocks running requests compute in later steps, by hash
    (``KVCacheManager.pending_prompt_hashes``): collected from the running requests only
    when a waiting request that hits the cache still has whole blocks to compute in a step,
    then kept up to date with the requests that step admits."""

    def __init__(self, kv: KVCacheManager, running: list[Request]) -> None:
        self._kv = kv
        self._running = running
        self._hashes: set[bytes] | None = None

    def holds(self, block_hash: bytes | None) -> bool:
        if block_hash is None:
            return False
        if self._hashes is None:
            self._hashes = self._kv.pending_prompt_hashes(self._running)
        return block_hash in self._hashes

    def add(self, request: Request) -> None:
        """A request admitted this step: its prompt chunks left for later steps."""
        if self._hashes is not None:
            self._hashes |= self._kv.pending_prompt_hashes((request,))


@dataclass
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_preemptions: int  # since start
    num_waiting_deferred: int = 0  # waiting on a grammar still compiling, not on capacity


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, kv_cache_manager: KVCacheManager, max_model_len: int
    ) -> None:
        self.config = config
        self.kv = kv_cache_manager
        self.max_model_len = max_model_len
        self.waiting = create_request_queue(config.policy)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        # Finished since the last schedule(); passed to the runner so it frees their state.
        self._finished_req_ids: set[str] = set()
        # Requests refused while waiting (their grammar failed to build): reported by the
        # next update_from_output.
        self._rejected: list[Request] = []
        self.num_preemptions = 0
        # Admission by forecast (admission.py) unless PAGEDLLM_ADMISSION_FORECAST=0.
        self.forecast_admission = envs.admission_forecast()
        # Unfinished requests that need their last token on the host before the next step
        # is scheduled (``needs_known_tokens``): while any exists, steps run synchronously.
        self.num_sync_requests = 0
        # Suspects of a failed step, tried apart from everyone else (``quarantine.py``).
        self.quarantine = Quarantine()
        # Steps' measured times, when prompt chunks are sized by them; the last step's end.
        self.step_time = StepTimeModel() if config.step_time_target > 0 else None
        self._last_step_end = 0.0

    # -- requests in and out -------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"Request id {request.request_id!r} is already running.")
        self.requests[request.request_id] = request
        self.num_sync_requests += needs_known_tokens(request)
        self.waiting.add(request)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        """End requests from outside (abort, stop string); unknown or finished ids are skipped."""
        finished = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            request.status = status
            self._free(request)
            finished.append(request)
        return finished

    def has_unfinished_requests(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    def get_num_unfinished_requests(self) -> int:
        return len(self.running) + len(self.waiting)

    def stats(self) -> SchedulerStats:
        deferred = sum(
            1 for r in self.waiting if r.structured_output and not r.structured_output.is_ready()
        )
        return SchedulerStats(
            len(self.running), len(self.waiting), self.kv.usage(), self.num_preemptions, deferred
        )

    # -- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        plan = _StepPlan(budget=self.config.max_num_batched_tokens)
        began = time.perf_counter() if self.step_time is not None else 0.0
        on_trial = self.quarantine.on_trial()
        self._schedule_running(plan, on_trial)
        if on_trial is not None:
            self._admit_suspects(plan, on_trial)
        elif not plan.preempted:
            self._schedule_waiting(plan)
        so = self._emit(plan)
        if self.step_time is not None:
            so.work = StepWork(so.total_num_scheduled_tokens, plan.pairs)
            so.scheduled_at = began
        return so

    def _schedule_running(self, plan: _StepPlan, on_trial: set[str] | None) -> None:
        """Running requests in order; during a trial only the suspects on trial."""
        i = 0
        while i < len(self.running) and plan.budget > 0:
            request = self.running[i]
            if on_trial is not None and request.request_id not in on_trial:
                i += 1
                continue
            num_new = self._num_new_tokens(request, plan, len(self.running) - i - 1)
            if num_new == 0:
                i += 1
                continue
            new_blocks = self.kv.allocate_slots(request, num_new)
            while new_blocks is None:
                victim = self._pick_victim()
                removed_at = self._preempt(victim, plan)
                if victim is request:
                    break
                if removed_at < i:
                    i -= 1
                new_blocks = self.kv.allocate_slots(request, num_new)
            if new_blocks is None:
                continue  # the request itself was preempted; self.running[i] is the next one
            plan.add(request, num_new, new_blocks)
            i += 1

    def _schedule_waiting(self, plan: _StepPlan) -> None:
        # Requests whose grammar is still compiling, or whose prompt chunks a running
        # request computes (see the module), keep their place in the queue.
        not_ready: list[Request] = []
        try:
            self._admit_waiting(plan, not_ready)
        finally:
            for request in reversed(not_ready):
                self.waiting.prepend(request)

    def _admit_waiting(self, plan: _StepPlan, not_ready: list[Request]) -> None:
        forecast: BlockForecast | None = None  # built once someone could be admitted
        pending = _PendingPrompts(self.kv, self.running)
        while (
            len(self.waiting) > 0
            and plan.budget > 0
            and len(self.running) < self.config.max_num_seqs
        ):
            request = self.waiting.peek()
            grammar = request.structured_output
            if grammar is not None and not grammar.is_ready():
                not_ready.append(self.waiting.pop())
                continue
            if grammar is not None and grammar.error is not None:
                self._reject(self.waiting.pop(), grammar.error)
                continue
            if forecast is None and self.running and self.forecast_admission:
                forecast = BlockForecast(self.running, self.kv, self.max_model_len)
            admission = self._allocate_admission(request, plan, forecast, pending)
            if admission is _WAIT_FOR_TWIN:
                not_ready.append(self.waiting.pop())
                continue
            if admission is None:
                break
            self.waiting.pop()
            self._admit(request, admission, plan)
            pending.add(request)

    def _admit_suspects(self, plan: _StepPlan, on_trial: set[str]) -> None:
        """During a trial: admit the waiting suspects on trial, preempting requests outside
        the trial when they hold the room (they would not run anyway)."""
        for request in [r for r in self.waiting if r.request_id in on_trial]:
            grammar = request.structured_output
            if grammar is not None and not grammar.is_ready():
                continue
            while (admission := self._allocate_admission(request, plan)) is None:
                if plan.budget <= 0 or not self._preempt_outsider(on_trial, plan):
                    return
            self.waiting.remove(request)
            self._admit(request, admission, plan)

    def _preempt_outsider(self, on_trial: set[str], plan: _StepPlan) -> bool:
        outsiders = [r for r in self.running if r.request_id not in on_trial]
        if not outsiders:
            return False
        self._preempt(outsiders[-1], plan)
        return True

    def _allocate_admission(
        self,
        request: Request,
        plan: _StepPlan,
        forecast: BlockForecast | None = None,
        pending: _PendingPrompts | None = None,
    ) -> _Admission | _Wait | None:
        """Room for a waiting request this step: (prefix-cache hit tokens, tokens to compute,
        its blocks, the hits), or None when the step has no room for it, or (``forecast``)
        when the running requests' projected growth leaves none; ``_WAIT_FOR_TWIN`` when its
        next uncached block is one of ``pending``'s (a running request computes it later)."""
        if plan.budget <= 0 or len(self.running) >= self.config.max_num_seqs:
            return None
        prefix, num_hit_tokens = self.kv.get_computed_blocks(request)
        # A twin hits the blocks its running twin registered (its first chunk's, at least):
        # one with no hit shares no prompt chunk in flight, and costs no lookup (W2's).
        if (
            pending is not None
            and num_hit_tokens
            and pending.holds(self.kv.first_missing_hash(request, prefix))
        ):
            return _WAIT_FOR_TWIN
        terms = (0.0, 0) if forecast is None else forecast.terms(request, prefix.device_blocks)
        if forecast is not None and not forecast.admits(terms):
            return None
        num_new = request.num_tokens - num_hit_tokens
        if not self.config.enable_chunked_prefill and num_new > plan.budget:
            return None
        num_new = self._cap_chunk(min(num_new, plan.budget))
        if num_new > 1 and self.step_time is not None:
            num_new = self._time_cap(num_new, num_hit_tokens, plan)
        new_blocks = self.kv.allocate_slots(request, num_new, prefix)
        if new_blocks is None:
            return None
        if forecast is not None:
            forecast.add(terms)
        return num_hit_tokens, num_new, prefix.device_blocks + new_blocks, prefix

    def _reject(self, request: Request, reason: str) -> None:
        logger.error("Request %s aborted: %s", request.request_id, reason)
        request.status = RequestStatus.FINISHED_ABORTED
        self._free(request)
        self._rejected.append(request)

    def _admit(self, request: Request, admission: _Admission, plan: _StepPlan) -> None:
        num_hit_tokens, num_new, blocks, prefix = admission
        if self.kv.enable_caching and not request.skip_prefix_cache:
            self.kv.record_lookup(request.num_tokens, num_hit_tokens, prefix)
        if request.known_to_runner:
            plan.resumed.add(request.request_id)
        else:
            plan.first_time.add(request.request_id)
        if request.num_cached_tokens < 0:
            request.num_cached_tokens = num_hit_tokens
        if request.scheduled_time is None:
            request.scheduled_time = time.time()
        request.num_computed_tokens = num_hit_tokens
        request.status = RequestStatus.RUNNING
        self.running.append(request)
        plan.add(request, num_new, blocks)

    def _num_new_tokens(self, request: Request, plan: _StepPlan, num_after: int) -> int:
        """Tokens of a running request known or in flight and not computed yet, within the
        budget and the chunk caps (``num_after``: running requests still to schedule, at
        least a token each). Called for every running request every step: it reads the
        request's lists directly rather than through its properties."""
        pending = request.num_output_placeholders
        num_tokens = len(request.all_token_ids)
        if pending and (
            len(request.output_token_ids) + pending >= request.max_tokens
            or num_tokens + pending >= self.max_model_len
        ):
            return 0  # the token in flight ends it by length: nothing more to compute
        computed = request.num_computed_tokens
        num_new = self._cap_chunk(min(num_tokens + pending - computed, plan.budget))
        if num_new > 1 and self.step_time is not None:
            return self._time_cap(num_new, computed, plan, num_after)
        return num_new

    def _cap_chunk(self, num_tokens: int) -> int:
        threshold = self.config.long_prefill_token_threshold
        return min(num_tokens, threshold) if threshold > 0 else num_tokens

    def _time_cap(
        self, num_tokens: int, num_computed: int, plan: _StepPlan, num_after: int = 0
    ) -> int:
        """A prompt chunk within what the step's time target leaves, or ``_PROMPT_SHARE`` of
        the target where less is left (at least ``_MIN_TIMED_CHUNK`` tokens;
        ``PROBE_CHUNK`` while the model has too few steps)."""
        model = self.step_time
        assert model is not None
        if not model.ready:
            return min(num_tokens, PROBE_CHUNK)
        scheduled = self.config.max_num_batched_tokens - plan.budget
        base = StepWork(scheduled + num_after, plan.pairs)
        target = self.config.step_time_target
        # Past the target already (decodes alone, or chunks before this one), a chunk may
        # still take a share of it: a prompt's first token then waits for some steps of
        # 1.5 targets, not for hundreds of minimal chunks.
        seconds = max(target - model.predict(base), target * _PROMPT_SHARE)
        return min(num_tokens, max(model.chunk_within(num_computed, seconds), _MIN_TIMED_CHUNK))

    def observe_step(self, so: SchedulerOutput) -> None:
        """A step's results are in: its time (from its scheduling, or from the previous
        step's end when it ran behind that one) goes to the step time model."""
        if self.step_time is None:
            return
        now = time.perf_counter()
        # An empty step (everything waiting on a grammar's compile) measures nothing.
        if so.work is not None and not so.is_empty:
            self.step_time.observe(so.work, now - max(so.scheduled_at, self._last_step_end))
        self._last_step_end = now

    def _pick_victim(self) -> Request:
        if self.config.policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival_time))
        return self.running[-1]

    def _preempt(self, victim: Request, plan: _StepPlan) -> int:
        """Free the victim's blocks and send it back to waiting; return its running index."""
        index = self.running.index(victim)
        del self.running[index]
        if victim.request_id in plan.num_scheduled:
            plan.drop(victim)
        if self.config.preemption_mode == "swap":
            self.kv.swap_out(victim)
        self.kv.free(victim)
        victim.status = RequestStatus.PREEMPTED
        victim.num_computed_tokens = 0
        victim.num_preemptions += 1
        self.num_preemptions += 1
        plan.preempted.add(victim.request_id)
        self.waiting.prepend(victim)
        return index

    def _emit(self, plan: _StepPlan) -> SchedulerOutput:
        new_reqs: list[NewRequestData] = []
        cached_reqs: list[CachedRequestData] = []
        scheduled: dict[str, Request] = {}
        sampling: list[str] = []
        # Runs for every scheduled request every step: the plan's maps are read as locals.
        first_time, resumed_ids = plan.first_time, plan.resumed
        num_scheduled, new_block_ids = plan.num_scheduled, plan.new_block_ids
        for request in plan.order:
            rid = request.request_id
            num_computed = request.num_computed_tokens
            if rid in first_time:
                new_reqs.append(self._new_request_data(request))
            elif rid in resumed_ids:
                block_ids = self.kv.get_block_ids(rid)
                cached_reqs.append(CachedRequestData(rid, True, block_ids, num_computed))
            else:
                cached_reqs.append(CachedRequestData(rid, False, new_block_ids[rid], num_computed))
            num_computed += num_scheduled[rid]
            request.num_computed_tokens = num_computed
            # Sampled when the step computes every token known or in flight.
            pending = request.num_output_placeholders
            samples = num_computed >= len(request.all_token_ids) + pending
            request.num_output_placeholders = pending + samples
            scheduled[rid] = request
            if samples:
                sampling.append(rid)
        finished, self._finished_req_ids = self._finished_req_ids, set()
        copies = self.kv.take_copies()
        return SchedulerOutput(
            scheduled_new_reqs=new_reqs,
            scheduled_cached_reqs=cached_reqs,
            num_scheduled_tokens=plan.num_scheduled,
            total_num_scheduled_tokens=sum(plan.num_scheduled.values()),
            finished_req_ids=finished,
            preempted_req_ids=plan.preempted - set(plan.num_scheduled),
            kv_swap_out=copies.swap_out,
            kv_swap_in=copies.swap_in,
            kv_save_ahead=copies.save_ahead,
            scheduled_requests=scheduled,
            sampling_req_ids=sampling,
        )

    def _new_request_data(self, request: Request) -> NewRequestData:
        """A request the runner learns of: sent in full, with its whole block table."""
        request.known_to_runner = True
        return NewRequestData(
            request.request_id,
            request.prompt_token_ids,
            request.sampling_params,
            self.kv.get_block_ids(request.request_id),
            request.num_computed_tokens,
            list(request.output_token_ids),
        )

    # -- results -------------------------------------------------------------------------

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        """Append sampled tokens, finish requests that stop, report what changed.

        With async scheduling this runs one step late: a request may have finished (its
        tokens are dropped), been aborted and its id reused (the scheduled object is not the
        live one: dropped), or been preempted since (still counted: it waits with them)."""
        outputs = [
            EngineCoreOutput(r.request_id, [], r.status.finish_reason, None, 0)
            for r in self._rejected
        ]
        self._rejected = []
        scheduled = scheduler_output.scheduled_requests
        for request_id in scheduler_output.sampling_req_ids:
            scheduled[request_id].num_output_placeholders -= 1
        stopped: set[str] = set()
        # Runs for every request every step: lookups hoisted out of the loop.
        requests, all_sampled = self.requests, runner_output.sampled_token_ids
        all_logprobs, all_prompt_lp = runner_output.logprobs, runner_output.prompt_logprobs
        for index, request_id in enumerate(runner_output.req_ids):
            request = requests.get(request_id)
            if scheduled.get(request_id, request) is not request:
                continue  # a new request under the id of one scheduled, finished since
            sampled = all_sampled[index]
            prompt_lp = all_prompt_lp[index] if all_prompt_lp else None
            if request is None or (not sampled and prompt_lp is None):
                continue
            was_running = request.status == RequestStatus.RUNNING
            logprobs = all_logprobs[index] if all_logprobs else None
            try:
                new_ids = self._append_until_stop(request, sampled)
            except GrammarError as exc:  # its own constraint (or saturated grammar work)
                outputs.append(self.fail_request(request, str(exc), exc.cause))
                continue
            except Exception as exc:  # e.g. a grammar that fails on the token: this request's
                outputs.append(self.fail_request(request, f"{type(exc).__name__}: {exc}"))
                continue
            output = EngineCoreOutput(
                request_id,
                new_ids,
                request.status.finish_reason,
                request.stop_reason,
                max(request.num_cached_tokens, 0),
                logprobs,
                prompt_lp,
            )
            if not request.timestamps_sent:
                _add_first_output_times(output, request)
            outputs.append(output)
            if request.is_finished:
                if was_running:
                    stopped.add(request_id)
                else:
                    self.waiting.remove(request)  # preempted while its token was in flight
                self._free(request)
        if stopped:
            self.running = [r for r in self.running if r.request_id not in stopped]
        if self.quarantine.active:
            self.quarantine.cleared(scheduler_output.sampling_req_ids)
        return outputs

    # -- failures ------------------------------------------------------------------------

    def fail_step(self, scheduler_output: SchedulerOutput, error: str) -> list[EngineCoreOutput]:
        """The step of ``scheduler_output`` failed and its results are lost. Its requests
        are reset (KV freed and recomputed later, generated tokens kept, the runner told to
        drop their state) and tried apart (``quarantine.py``); once a step that held one of
        them alone fails, that request is failed with ``error``, the others never see it."""
        live = [
            request
            for rid, request in scheduler_output.scheduled_requests.items()
            if self.requests.get(rid) is request
        ]
        for request in live:
            self._reset(request, scheduler_output.num_scheduled_tokens[request.request_id])
        culprit = self.quarantine.step_failed([r.request_id for r in live])
        if culprit is None:
            return []
        return [self.fail_request(self.requests[culprit], error)]

    def fail_request(
        self, request: Request, error: str, cause: ErrorCause = ErrorCause.ENGINE
    ) -> EngineCoreOutput:
        """End one request with an error of its own (finish reason "error"); ``cause``:
        what the request asked (its caller gets a 400), or an overload (503), or a fault."""
        # A client's own input or an overload is a warning: an error line is for a fault.
        log = logger.error if cause == ErrorCause.ENGINE else logger.warning
        log("Request %s failed: %s", request.request_id, error)
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED_ERROR
        request.error = error
        self._free(request)
        output = EngineCoreOutput(
            request.request_id, [], request.status.finish_reason, None,
            max(request.num_cached_tokens, 0), error=error, error_cause=cause,
        )  # fmt: skip
        if not request.timestamps_sent:
            _add_first_output_times(output, request)
        return output

    def _reset(self, request: Request, num_failed_tokens: int) -> None:
        """Undo a failed step for one request: it waits again with no KV and no tokens in
        flight, and the runner forgets it (it is sent in full when scheduled again)."""
        # The failed step's tokens were never computed: their blocks' hashes must go.
        request.num_computed_tokens -= num_failed_tokens
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_output_placeholders = 0
        request.known_to_runner = False
        self._finished_req_ids.add(request.request_id)
        self.waiting.prepend(request)

    def _append_until_stop(self, request: Request, sampled: Sequence[int]) -> Sequence[int]:
        if len(sampled) == 1:  # every step but speculative ones
            request.append_output_token(sampled[0])
            self._check_stop(request, sampled[0])
            return sampled
        for count, token_id in enumerate(sampled, start=1):
            request.append_output_token_ids([token_id])
            if self._check_stop(request, token_id):
                return sampled[:count]
        return sampled

    def _check_stop(self, request: Request, token_id: int) -> bool:
        """Advance the request's grammar (if any) by the token, then the stop rules. A
        grammar that has accepted its stop token ends the request even when eos is ignored."""
        grammar = request.structured_output
        if grammar is not None and not grammar.accept_token(token_id):
            # The mask allowed no token: a grammar whose language is empty, or other
            # constraints (min_tokens, allowed_token_ids, bad_words) that exclude all it
            # allows. The client's doing: the request fails as its input's (a 400).
            raise GrammarError(
                f"The structured output constraint allows no token after "
                f"{request.num_output_tokens - 1} output tokens: its language is empty there, or "
                "other sampling constraints exclude every token it allows."
            )
        if check_stop(request, self.max_model_len):
            return True
        if grammar is not None and grammar.is_terminated():
            request.status = RequestStatus.FINISHED_STOPPED
            return True
        if grammar is not None and grammar.error is not None:
            # Its mask took too long (the token it sampled with it is kept, and ends the
            # request above when it would): it fails rather than run on.
            raise GrammarError(grammar.error, grammar.error_cause)
        return False

    def _free(self, request: Request) -> None:
        if request.structured_output is not None:
            request.structured_output.release()
        self.kv.free(request)
        self.kv.release_swapped(request)
        del self.requests[request.request_id]
        self.num_sync_requests -= needs_known_tokens(request)
        self._finished_req_ids.add(request.request_id)
        if self.quarantine.active:
            self.quarantine.discard([request.request_id])

    def reset_prefix_cache(self) -> bool:
        return self.kv.reset_prefix_cache()


def needs_known_tokens(request: Request) -> bool:
    """Whether the next step of this request depends on the host knowing its last sampled
    token: its grammar must accept it before the next bitmask, bad words are matched and
    user processors called on the output ids. Such requests are not scheduled ahead."""
    params = request.sampling_params
    return bool(
        request.structured_output is not None
        or params.bad_words_token_ids
        or params.logits_processors
    )


def _add_first_output_times(output: EngineCoreOutput, request: Request) -> None:
    """The core's queue and scheduling times go with the request's first output only."""
    request.timestamps_sent = True
    output.queued_time = request.queued_time
    output.scheduled_time = request.scheduled_time
