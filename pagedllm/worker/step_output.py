"""A launched step's results, read back when the engine asks for them.

``execute_model`` queues a step on the device and returns a ``LaunchedStep`` at once: the
sampled ids (and logprobs) are being copied into pinned host memory behind the step's
kernels. ``resolve()`` waits for those copies only, not for later work queued on the same
stream, so with async scheduling the next step is already running while this one's tokens
are read; it returns data, and ``ModelRunner.resolve`` records the tokens in the runner's
request states. Until then, each sampled request counts its token as pending
(``RequestState.num_pending``) and the next step takes it from ``device_token_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagedllm.core.scheduler_output import LogprobsLists, ModelRunnerOutput
from pagedllm.sample.logprobs import LogprobsTensors
from pagedllm.sample.sampler import SamplerOutput
from pagedllm.worker.request_state import RequestState


@dataclass
class SampledOnDevice:
    """One step's sampler output, its host copies under way."""

    device_token_ids: torch.Tensor  # [rows] int64, where the next step reads its inputs
    host_token_ids: torch.Tensor
    host_logprobs: LogprobsTensors | None
    logprobs_ks: list[int]  # the top-k each row asked for
    copied: torch.cuda.Event | None  # None on the CPU: the copies are the tensors

    @classmethod
    def start(cls, out: SamplerOutput, logprobs_ks: list[int]) -> SampledOnDevice:
        lp = out.logprobs
        if not out.token_ids.is_cuda:
            return cls(out.token_ids, out.token_ids, lp, logprobs_ks, None)
        # Device -> host with non_blocking lands in pinned memory: an asynchronous copy.
        host_ids = out.token_ids.to("cpu", non_blocking=True)
        host_lp = None
        if lp is not None:
            host_lp = LogprobsTensors(
                *(
                    t.to("cpu", non_blocking=True)
                    for t in (lp.top_ids, lp.top_logprobs, lp.chosen_logprobs, lp.chosen_ranks)
                )
            )
        copied = torch.cuda.Event()
        copied.record()
        return cls(out.token_ids, host_ids, host_lp, logprobs_ks, copied)

    def read(self) -> tuple[list[int], list[LogprobsLists] | None]:
        """The step's one wait for the device: its own copies."""
        if self.copied is not None:
            self.copied.synchronize()
        tokens = self.host_token_ids.tolist()
        if self.host_logprobs is None:
            return tokens, None
        return tokens, self.host_logprobs.to_lists(tokens, self.logprobs_ks)


@dataclass
class LaunchedStep:
    req_ids: list[str]  # batch order
    sampled_req_indices: list[int]  # the request index of each sampled row
    states: list[RequestState]  # each sampled row's request, the objects of this step
    sampled: SampledOnDevice | None
    prompt_logprobs: list[LogprobsLists | None] | None

    @classmethod
    def empty(cls) -> LaunchedStep:
        return cls([], [], [], None, None)

    def resolve(self) -> tuple[ModelRunnerOutput, list[int]]:
        """Wait for the sampled ids; the step's output, and each sampled row's token (for
        the runner to record in its request states: ``ModelRunner.resolve``)."""
        num_reqs = len(self.req_ids)
        # Tuples of ints, not lists: the collector stops tracking them at its first look, so
        # they are never promoted with the step's outputs and never bring on a full pass
        # (RESULTS "The scheduler's per-step objects").
        sampled: list[Sequence[int]] = [()] * num_reqs
        if self.sampled is None:
            return ModelRunnerOutput(self.req_ids, sampled, None, self.prompt_logprobs), []
        tokens, token_logprobs = self.sampled.read()
        indices = self.sampled_req_indices
        if len(indices) == num_reqs:  # every request sampled (indices ascend): each its row
            sampled = [(token,) for token in tokens]
        else:
            for row, req_index in enumerate(indices):
                sampled[req_index] = (tokens[row],)
        logprobs: list[LogprobsLists | None] | None = None
        if token_logprobs is not None:
            logprobs = [None] * num_reqs
            for row, req_index in enumerate(indices):
                logprobs[req_index] = token_logprobs[row]
        output = ModelRunnerOutput(self.req_ids, sampled, logprobs, self.prompt_logprobs)
        return output, tokens
