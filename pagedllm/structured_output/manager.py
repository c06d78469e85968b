"""Compiles grammars off the engine loop and fills each step's token bitmask.

A request's grammar is built from its constraint and compiled against the tokenizer on a
worker thread; the request waits (the scheduler skips it) until its grammar is ready, so a
slow build or compile never stalls other requests (a deep schema's build alone took seconds
on the engine's loop, once per sample of ``n``). Equal constraints share one build and
compile (the samples of ``n`` among them), kept for later requests within a byte budget
(``envs.grammar_cache_bytes``). Each step the matchers of the constrained rows fill one
bitmask on threads, while the device runs the forward pass, each row under a deadline and
its cost counted (``mask_fill``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pagedllm import envs
from pagedllm.core.request import ErrorCause, GrammarError
from pagedllm.logger import init_logger
from pagedllm.sample.grammar_mask import GrammarBitmask
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output.mask_fill import SATURATED_ERROR, MaskFiller
from pagedllm.structured_output.request_grammar import RequestGrammar
from pagedllm.structured_output.spec import build_grammar_spec, constraint_key
from pagedllm.structured_output.thread_priority import lower_priority

logger = init_logger(__name__)

# Compiled grammars kept for reuse by later requests with the same constraint, at most.
_CACHE_ENTRIES = 256
# Constraints that failed a request as too slow to follow, remembered (most recent) so the
# same constraint sent again is refused at once instead of stalling steps until it fails.
_TOO_SLOW_ENTRIES = 1024
# Constraints a request has followed cheaply (``RequestGrammar.followed_cheaply``),
# remembered (most recent): while the mask fills are saturated only these begin.
_CHEAP_ENTRIES = 4096


# How much lower than the engine's own threads the compile threads (and the threads
# xgrammar starts from them, which inherit it) run: on a busy host the scheduler's loop and
# the mask fills of running requests come first, and many costly compiles at once no longer
# slow everyone's steps (the compiles are what waits).
COMPILE_NICENESS = 10


def _compile_thread_started() -> None:
    lower_priority(threading.get_native_id(), COMPILE_NICENESS)


class StructuredOutputManager:
    def __init__(
        self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], pin_memory: bool
    ) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._stop_token_ids = stop_token_ids
        self._executor = ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="grammar", initializer=_compile_thread_started
        )
        self._lock = threading.Lock()  # the compiler's creation
        # ``_compiled`` and ``_holders``: the loop and the compile threads. Reentrant: a
        # cancel under it runs the future's callback (``_evict``) on the same thread.
        self._cache_lock = threading.RLock()
        self._compiler: Any = None
        self._compiled: OrderedDict[str, Future[Any]] = OrderedDict()
        self._holders: dict[Future[Any], int] = {}  # requests waiting on or using each compile
        self._filler = MaskFiller(vocab_size, pin_memory)
        self._too_slow: OrderedDict[str, str] = OrderedDict()  # constraint key -> error
        self._cheap: OrderedDict[str, None] = OrderedDict()  # constraint keys

    def request_grammar(self, constraint: StructuredOutputsParams) -> RequestGrammar:
        """A fresh matcher state for one request (each sample of ``n`` has its own); its
        grammar built and compiled on the compile threads (a constraint that no longer
        builds fails the request there: ``RequestGrammar.error``). A constraint that already
        failed a request as too slow to follow raises ``GrammarError``, and so does one not
        seen followed cheaply while the mask fills are saturated (an overload: 503)."""
        key = constraint_key(constraint)
        if key in self._too_slow:
            raise GrammarError(self._too_slow[key])
        if key not in self._cheap and self._filler.saturated:
            raise GrammarError(SATURATED_ERROR, ErrorCause.OVERLOADED)
        future = self._compile(constraint, key)
        with self._cache_lock:
            self._holders[future] = self._holders.get(future, 0) + 1
        return RequestGrammar(future, self._release, key)

    def _release(self, grammar: RequestGrammar) -> None:
        """One request fewer waits for its compile: with none left, a compile still queued
        is dropped (a client that went away no longer holds a compile thread later; one
        already compiling runs to its end). A constraint it followed cheaply is noted."""
        if grammar.followed_cheaply:
            self._cheap[grammar.key] = None
            self._cheap.move_to_end(grammar.key)
            if len(self._cheap) > _CHEAP_ENTRIES:
                self._cheap.popitem(last=False)
        future = grammar.compiled
        with self._cache_lock:
            holders = self._holders.pop(future) - 1
            if holders > 0:
                self._holders[future] = holders
            elif future.cancel():
                key = next((k for k, f in self._compiled.items() if f is future), None)
                if key is not None:
                    del self._compiled[key]

    def _compile(self, constraint: StructuredOutputsParams, key: str) -> Future[Any]:
        with self._cache_lock:
            future = self._compiled.get(key)
            if future is not None and not (future.done() and future.exception() is not None):
                self._compiled.move_to_end(key)
                return future
            future = self._executor.submit(self._compile_now, constraint)
            self._compiled[key] = future
        # Sizes are known once compiled: the budget is applied then too (on the compile
        # thread), not only when the next constraint comes.
        future.add_done_callback(lambda _: self._evict())
        self._evict()
        return future

    def _compile_now(self, constraint: StructuredOutputsParams) -> Any:
        return self._get_compiler().compile_grammar(build_grammar_spec(constraint).grammar)

    def _evict(self) -> None:
        """Drop the least recently used compiles past ``_CACHE_ENTRIES`` or past the byte
        budget (compiled grammars only: one still compiling has no size yet). Requests
        holding a dropped one keep it."""
        budget = envs.grammar_cache_bytes()
        with self._cache_lock:
            sizes = [_size(f) for f in self._compiled.values()]
            total = sum(sizes)
            for key, size in zip(list(self._compiled), sizes):
                if len(self._compiled) <= _CACHE_ENTRIES and total <= budget:
                    break
                del self._compiled[key]
                total -= size

    def _get_compiler(self) -> Any:
        """The tokenizer's xgrammar vocabulary is built once, on first use (~1 s)."""
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer,
                    vocab_size=self.vocab_size,
                    stop_token_ids=self._stop_token_ids or None,
                )
                # xgrammar's own cache off: ``_compiled`` keeps what is reused, within its
                # byte budget (xgrammar's is unbounded by default).
                self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
            return self._compiler

    def fill_bitmask(self, grammars: list[RequestGrammar | None]) -> GrammarBitmask | None:
        """The bitmask for a step whose sampled rows have these grammars (None: free); a
        constraint that fails its request here is remembered as too slow to follow."""
        bitmask, failed = self._filler.fill(grammars)
        for grammar in failed:
            assert grammar.error is not None
            if grammar.error_cause != ErrorCause.INPUT:
                continue  # an overload, not the constraint's cost
            self._too_slow[grammar.key] = grammar.error
            if len(self._too_slow) > _TOO_SLOW_ENTRIES:
                self._too_slow.popitem(last=False)
        return bitmask

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._filler.shutdown()


def _size(future: Future[Any]) -> int:
    """A finished compile's bytes (0 while compiling, or for a failed one)."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return 0
    return int(future.result().memory_size_bytes)
