"""A request's several samples (``n``, ``best_of``) and how their outputs are gathered."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from pagedllm.outputs import CompletionOutput
from pagedllm.sampling_params import SEED_LIMIT, RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from pagedllm.engine.logprobs_accumulator import LogprobsAccumulator


def num_samples(params: SamplingParams) -> int:
    """Sequences to generate: best_of when it asks for more than n."""
    return max(params.n, params.best_of or 0)


class ParentRequest:
    """The user's request when it asks for several samples (``n > 1`` or ``best_of > n``):
    its children are ``f"{i}_{request_id}"``."""

    def __init__(self, request_id: str, params: SamplingParams) -> None:
        self.request_id = request_id
        self.params = params
        self.child_ids: list[str] = [f"{i}_{request_id}" for i in range(num_samples(params))]
        self.unfinished: set[str] = set(self.child_ids)
        self.final: dict[int, CompletionOutput] = {}
        self.num_generated = 0  # over all children, for stats
        self.max_generated = 0  # the longest child's, for stats
        # The first sample's logprobs (set by the output processor): it alone computes the
        # prompt's logprobs, for every sample's final output.
        self.prompt_logprobs_source: LogprobsAccumulator | None = None

    @property
    def ranks_samples(self) -> bool:
        """best_of > n: more samples are drawn than returned, the best kept."""
        return len(self.child_ids) > self.params.n

    def child_params(self, index: int) -> SamplingParams:
        """The sample's own params: a shallow copy, its lists shared with its siblings'
        (nothing mutates an admitted request's lists; a deep copy per sample of a long
        allowed_token_ids held the engine thread for 26 s at n=128)."""
        child = copy.copy(self.params)
        if index > 0:  # the first sample computes the prompt's logprobs for all: the others
            child.prompt_logprobs = None  # may then reuse its cached prefix (n prefills cost n)
        child.n = 1
        if child.seed is not None:
            child.seed = (child.seed + index) % SEED_LIMIT  # distinct but reproducible samples
        return child

    def collect(
        self, child_id: str, completion: CompletionOutput | None
    ) -> tuple[list[CompletionOutput], bool]:
        """Outputs to emit for this child update, and whether the parent is finished.

        Streaming kinds emit each child's update on its own (vLLM's behaviour); FINAL_ONLY
        emits all n completions, in index order, once the last child finishes.
        """
        if completion is not None and completion.finished():
            self.unfinished.discard(child_id)
        finished = not self.unfinished
        if self.params.output_kind != RequestOutputKind.FINAL_ONLY:
            return ([completion] if completion is not None else []), finished
        if completion is not None:
            self.final[completion.index] = completion
        if not finished:
            return [], False
        return self._best(), True

    def _best(self) -> list[CompletionOutput]:
        """All n completions in index order; with best_of, the n of highest cumulative
        logprob, re-indexed 0..n-1."""
        outputs = [self.final[i] for i in sorted(self.final)]
        if len(outputs) == self.params.n:
            return outputs
        ranked = sorted(outputs, key=lambda c: c.cumulative_logprob or 0.0, reverse=True)
        best = ranked[: self.params.n]
        for index, completion in enumerate(best):
            completion.index = index
        return best
