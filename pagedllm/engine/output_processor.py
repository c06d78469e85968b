"""EngineCoreOutputs -> RequestOutputs: detokenize, cut at stop strings, apply the output
kind, and gather the ``n`` completions of a parent request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.core.request import ErrorCause
from pagedllm.core.scheduler_output import EngineCoreOutput
from pagedllm.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from pagedllm.engine.logprobs_accumulator import LogprobsAccumulator, TokenDecoder
from pagedllm.engine.parent_request import ParentRequest
from pagedllm.metrics.stats import FinishedRequestStats, IterationStats
from pagedllm.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class RequestState:
    """Output-side state of one sequence (a child of a parent when n > 1)."""

    request_id: str
    parent: ParentRequest | None
    index: int
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer | None
    metrics: RequestMetrics
    logprobs: LogprobsAccumulator
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent_tokens: int = 0
    sent_chars: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    prompt_logprobs_sent: bool = False
    queue: Any = None  # set by AsyncLLM: where this request's outputs go
    error: str | None = None  # finish_reason "error": why, for this request's caller only
    error_cause: ErrorCause = ErrorCause.ENGINE  # ... and what caused it
    queued_time: float | None = None  # the engine core's clock, from its first output
    # Characters held back while streaming: they may turn out to start a stop string. Fixed
    # by the params; read for every streamed output, so computed once.
    stop_buffer: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        stops = self.params.stop_strings
        if stops and not self.params.include_stop_str_in_output:
            self.stop_buffer = max(len(s) for s in stops) - 1

    @property
    def external_id(self) -> str:
        return self.parent.request_id if self.parent else self.request_id

    def update(self, out: EngineCoreOutput) -> bool:
        """Take one step's tokens; return True if a stop string ended the request here."""
        self.token_ids.extend(out.new_token_ids)
        self.num_cached_tokens = out.num_cached_tokens
        if out.scheduled_time is not None:
            self.queued_time = out.queued_time
            self.metrics.first_scheduled_time = out.scheduled_time
        self.logprobs.add_sample(out.new_logprobs)
        self.logprobs.add_prompt(out.new_prompt_logprobs)
        hit_stop = False
        if self.detokenizer is not None and out.new_token_ids:
            shown = out.new_token_ids
            if _stopped_by_token(out) and not self.params.include_stop_str_in_output:
                shown = shown[:-1]  # as vLLM: the stop token's text is left out (not its id)
            delta = self.detokenizer.decode(shown)
            self.text += delta
            found = find_stop_string(
                self.text,
                len(delta),
                self.params.stop_strings,
                self.params.include_stop_str_in_output,
            )
            if found is not None:
                self.text = self.text[: found[1]]
                self.finish_reason, self.stop_reason = "stop", found[0]
                hit_stop = out.finish_reason is None
        if self.finish_reason is None and out.finish_reason is not None:
            self.finish_reason, self.stop_reason = str(out.finish_reason), out.stop_reason
        return hit_stop

    def completion(self) -> CompletionOutput | None:
        """This update's completion per the output kind; None when there is nothing to send."""
        finished = self.finish_reason is not None
        kind = self.params.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        visible = len(self.text) if finished else max(len(self.text) - self.stop_buffer, 0)
        logprobs = self.logprobs.logprobs
        if kind == RequestOutputKind.DELTA:
            text, tokens = self.text[self.sent_chars : visible], self.token_ids[self.sent_tokens :]
            if not text and not tokens and not finished:
                return None
            if logprobs is not None:
                logprobs = logprobs[self.sent_tokens :]
        else:
            if len(self.token_ids) == self.sent_tokens and not finished:
                return None  # a prompt-logprobs chunk: nothing generated yet
            text, tokens = self.text[:visible], list(self.token_ids)
            logprobs = list(logprobs) if logprobs is not None else None
        self.sent_chars, self.sent_tokens = max(visible, self.sent_chars), len(self.token_ids)
        return CompletionOutput(
            index=self.index,
            text=text,
            token_ids=tokens,
            cumulative_logprob=self.logprobs.cumulative,
            logprobs=logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


def _stopped_by_token(out: EngineCoreOutput) -> bool:
    """The engine core finishes a request with "stop" only on a stop token (eos or a
    ``stop_token_ids`` id; a structured-output grammar ends on eos too): its last token."""
    return out.finish_reason is not None and str(out.finish_reason) == "stop"


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._token_strings: dict[int, str] = {}
        self.states: dict[str, RequestState] = {}
        # external id -> child ids (just [id] when n == 1)
        self.children: dict[str, list[str]] = {}
        # Requests aborted between steps, reported with the next step's stats.
        self._aborted: list[FinishedRequestStats] = []
        self._aborted_samples: list[tuple[int, int]] = []  # (n, longest sample) of each

    def has_unfinished_requests(self) -> bool:
        return bool(self.states)

    def get_num_unfinished_requests(self) -> int:
        """User requests (a request with n samples counts once)."""
        return len(self.children)

    def has_request(self, request_id: str) -> bool:
        """Is the id live, as a user's request id or as one of its children's?"""
        return request_id in self.children or request_id in self.states

    def add_request(
        self,
        request_id: str,
        parent: ParentRequest | None,
        index: int,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        queue: Any = None,
    ) -> None:
        detokenizer = None
        decode: TokenDecoder = None
        if params.detokenize and self.tokenizer is not None:
            detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params)
            decode = self.token_string
        best_of = params.best_of is not None and parent is not None and parent.ranks_samples
        logprobs = LogprobsAccumulator(params.logprobs, params.prompt_logprobs, best_of, decode)
        if parent is not None and index == 0:
            parent.prompt_logprobs_source = logprobs
        self.states[request_id] = RequestState(
            request_id,
            parent,
            index,
            prompt,
            prompt_token_ids,
            params,
            detokenizer,
            RequestMetrics(arrival_time=arrival_time),
            logprobs,
            queue=queue,
        )
        external = parent.request_id if parent else request_id
        self.children.setdefault(external, []).append(request_id)

    def token_string(self, token_id: int) -> str:
        """A token as text (vLLM's decoded_token), cached per id."""
        text = self._token_strings.get(token_id)
        if text is None:
            token = self.tokenizer.convert_ids_to_tokens(token_id)
            text = self.tokenizer.convert_tokens_to_string([token]) if token is not None else ""
            self._token_strings[token_id] = text
        return text

    def abort_requests(
        self, external_ids: list[str]
    ) -> tuple[list[str], list[tuple[RequestState, RequestOutput]]]:
        """Forget requests. Returns the child ids the engine core must abort, and for
        whoever is still listening each request's last outputs (finish_reason "abort"):
        one per sample still running when it streams (so every sample's end is seen), the
        request's finished one last."""
        child_ids: list[str] = []
        finals: list[tuple[RequestState, RequestOutput]] = []
        now = time.time()
        for external in external_ids:
            children = self.children.pop(external, [])
            states = [st for c in children if (st := self.states.pop(c, None)) is not None]
            if not states:
                continue
            child_ids += [st.request_id for st in states]
            for state in states:
                state.finish_reason = "abort"
                output = self._request_output(state)
                if output is not None:  # None: FINAL_ONLY's samples before the last
                    finals.append((state, output))
            generated = sum(len(st.token_ids) for st in states)
            longest = max(len(st.token_ids) for st in states)
            if states[0].parent is not None:
                generated += states[0].parent.num_generated
                longest = max(longest, states[0].parent.max_generated)
            self._aborted.append(_finished_stats(states[0], "abort", now, generated))
            self._aborted_samples.append((_n_param(states[0]), longest))
        return child_ids, finals

    def process_outputs(
        self, outputs: list[EngineCoreOutput], stats: IterationStats | None = None
    ) -> tuple[list[tuple[RequestState, RequestOutput]], list[str]]:
        """Per update: (state, RequestOutput) pairs to deliver, and child ids to abort in the
        core because a stop string ended them. Latencies go into ``stats`` when given."""
        now = time.time()
        stats = stats if stats is not None else IterationStats()
        stats.finished += self._aborted
        for n, longest in self._aborted_samples:
            stats.n_params.append(n)
            stats.max_num_generation_tokens.append(longest)
        self._aborted, self._aborted_samples = [], []
        delivered: list[tuple[RequestState, RequestOutput]] = []
        to_abort: list[str] = []
        for out in outputs:
            state = self.states.get(out.request_id)
            if state is None:
                continue  # aborted while in flight
            try:
                if out.error is not None:
                    state.error_cause = out.error_cause
                    raise _EngineFailure(out.error)
                item = self._process(state, out, now, stats, to_abort)
            except Exception as exc:
                # This request's failure, delivered to it alone.
                error = str(exc) if isinstance(exc, _EngineFailure) else (
                    f"Output processing failed: {type(exc).__name__}: {exc}"
                )  # fmt: skip
                item, children = self._fail(state, error, now, stats)
                to_abort += children
            if item is not None:
                delivered.append(item)
        return delivered, to_abort

    def _process(
        self,
        state: RequestState,
        out: EngineCoreOutput,
        now: float,
        stats: IterationStats,
        to_abort: list[str],
    ) -> tuple[RequestState, RequestOutput] | None:
        if state.update(out):
            to_abort.append(out.request_id)
        _record_timing(state, now, len(out.new_token_ids), stats)
        if state.finish_reason is None and state.params.output_kind == RequestOutputKind.FINAL_ONLY:
            return None  # nothing to deliver until it finishes
        request_output = self._request_output(state)
        if state.finish_reason is not None:
            self._finish(state, request_output, now, stats)
        return (state, request_output) if request_output is not None else None

    def _fail(
        self, state: RequestState, error: str, now: float, stats: IterationStats
    ) -> tuple[tuple[RequestState, RequestOutput], list[str]]:
        """Fail the user's request that ``state`` belongs to, all its samples: a final
        output with finish reason "error", and the child ids the core must abort."""
        children = self.children.pop(state.external_id, [])
        siblings = [s for c in children if (s := self.states.pop(c, None)) is not None]
        state.error, state.finish_reason, state.stop_reason = error, "error", None
        completion = CompletionOutput(
            state.index, state.text, list(state.token_ids), state.logprobs.cumulative,
            state.logprobs.logprobs, "error",
        )  # fmt: skip
        state.metrics.finished_time = now
        output = RequestOutput(
            request_id=state.external_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=None,
            outputs=[completion],
            finished=True,
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
        )
        generated = sum(len(s.token_ids) for s in siblings)
        stats.finished.append(_finished_stats(state, "error", now, generated))
        stats.n_params.append(_n_param(state))
        stats.max_num_generation_tokens.append(max(len(s.token_ids) for s in [state, *siblings]))
        return (state, output), [s.request_id for s in siblings]

    def _finish(
        self,
        state: RequestState,
        request_output: RequestOutput | None,
        now: float,
        stats: IterationStats,
    ) -> None:
        self._forget(state)
        generated = longest = len(state.token_ids)
        if state.parent is not None:
            state.parent.num_generated += generated
            state.parent.max_generated = max(state.parent.max_generated, generated)
            if request_output is None or not request_output.finished:
                return  # the parent counts once, when its last child finishes
            generated, longest = state.parent.num_generated, state.parent.max_generated
        stats.finished.append(_finished_stats(state, state.finish_reason or "stop", now, generated))
        stats.n_params.append(_n_param(state))
        stats.max_num_generation_tokens.append(longest)

    def _request_output(self, state: RequestState) -> RequestOutput | None:
        completion = state.completion()
        if state.parent is None:
            if completion is None:
                return None
            outputs, finished = [completion], completion.finished()
        else:
            outputs, finished = state.parent.collect(state.request_id, completion)
            if not outputs and not finished:
                return None
        if finished:
            state.metrics.finished_time = time.time()
        prompt_logprobs = state.logprobs.prompt_logprobs
        streamed = state.params.output_kind == RequestOutputKind.DELTA
        if prompt_logprobs is None and finished and not streamed and state.parent is not None:
            source = state.parent.prompt_logprobs_source  # the first sample's, complete now
            prompt_logprobs = None if source is None else source.prompt_logprobs
        if streamed and state.prompt_logprobs_sent:
            prompt_logprobs = None  # streamed once, with the first output
        state.prompt_logprobs_sent = True
        return RequestOutput(
            request_id=state.external_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=outputs,
            finished=finished,
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
        )

    def _forget(self, state: RequestState) -> None:
        self.states.pop(state.request_id, None)
        external = state.external_id
        siblings = self.children.get(external)
        if siblings is not None and not any(c in self.states for c in siblings):
            del self.children[external]


class _EngineFailure(Exception):
    """The engine core failed a request: its message is the request's own error."""


def _record_timing(state: RequestState, now: float, num_new: int, stats: IterationStats) -> None:
    metrics = state.metrics
    if metrics.first_scheduled_time is None:
        metrics.first_scheduled_time = now
    if num_new == 0:
        return
    if metrics.first_token_time is None:
        metrics.first_token_time = now
        stats.time_to_first_tokens.append(now - metrics.arrival_time)
        # Its prefill is over: the prompt counts now, as in vLLM (cached part included).
        stats.num_prefilled_prompt_tokens += len(state.prompt_token_ids)
        stats.num_cached_prompt_tokens += state.num_cached_tokens
        num_new -= 1
    elif metrics.last_token_time is not None:
        gap = (now - metrics.last_token_time) / num_new
        stats.inter_token_latencies += [gap] * num_new
    metrics.last_token_time = now


def _n_param(state: RequestState) -> int:
    return state.parent.params.n if state.parent is not None else 1


def _finished_stats(
    state: RequestState, reason: str, now: float, generated: int
) -> FinishedRequestStats:
    """vLLM's phases of one request (``state``: its last sample to finish, when n > 1)."""
    m = state.metrics
    scheduled = m.first_scheduled_time if state.queued_time is not None else None
    queued = (scheduled if scheduled is not None else now) - (state.queued_time or now)
    prefill = decode = inference = tpot = 0.0
    if scheduled is not None and m.first_token_time is not None:
        last = m.last_token_time or m.first_token_time
        prefill = m.first_token_time - scheduled
        decode = last - m.first_token_time
        inference = last - scheduled
        tpot = decode / (len(state.token_ids) - 1) if len(state.token_ids) > 1 else 0.0
    return FinishedRequestStats(
        reason, now - m.arrival_time, len(state.prompt_token_ids), generated,
        state.params.max_tokens, state.num_cached_tokens, max(queued, 0.0), max(prefill, 0.0),
        max(decode, 0.0), max(inference, 0.0), max(tpot, 0.0),
    )  # fmt: skip
