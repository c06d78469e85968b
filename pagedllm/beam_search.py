"""Beam search over the engine, as vLLM offers it (``LLM.beam_search``, the server's
``use_beam_search``).

Each step asks the engine for one token per live beam with the top ``2 * beam_width``
logprobs (the model's raw distribution), expands every beam by those candidates, and keeps
the ``beam_width`` best by cumulative logprob; candidates ending in EOS are set aside as
finished (unless ``ignore_eos``). Every step resubmits each beam's whole sequence, and the
prefix cache makes the shared prompt and earlier tokens free, so beams share their blocks.
The final ranking divides the cumulative logprob by ``length ** length_penalty``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pagedllm.outputs import Logprob, RequestOutput
from pagedllm.sampling_params import BeamSearchParams, SamplingParams


@dataclass
class BeamSearchSequence:
    """One beam: ``tokens`` holds the prompt and the generated tokens."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_prompt_tokens: int = 0

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]


def beam_score(beam: BeamSearchSequence, eos_token_id: int | None, length_penalty: float) -> float:
    """vLLM's score: cumulative logprob over (sequence length ** length_penalty), the length
    counting the prompt and not counting a final EOS."""
    length = len(beam.tokens)
    if eos_token_id is not None and beam.tokens[-1] == eos_token_id:
        length -= 1
    # length ** length_penalty as exp(log): a huge penalty overflowed (a 500), a hugely
    # negative one underflowed to a division by zero; the exponent is clamped to where a
    # float stays finite, which leaves every sane penalty's score as it was.
    exponent = length_penalty * math.log(max(length, 1))
    return beam.cum_logprob * math.exp(-max(-700.0, min(700.0, exponent)))


def step_params(params: BeamSearchParams) -> SamplingParams:
    return SamplingParams(
        logprobs=2 * params.beam_width,
        max_tokens=1,
        temperature=params.temperature,
        detokenize=False,
        ignore_eos=True,  # the search itself decides what an EOS means
    )


class BeamSearchState:
    """The live beams and finished candidates of one prompt."""

    def __init__(self, prompt_ids: list[int], params: BeamSearchParams, eos: int | None) -> None:
        self.params = params
        self.eos = eos
        self.beams = [BeamSearchSequence(list(prompt_ids), num_prompt_tokens=len(prompt_ids))]
        self.completed: list[BeamSearchSequence] = []

    def can_grow(self, step: int, max_model_len: int) -> bool:
        """Another step fits: within max_tokens and within the model's context."""
        longest = max((len(b.tokens) for b in self.beams), default=max_model_len)
        return step < self.params.max_tokens and longest < max_model_len

    def advance(self, outputs: list[RequestOutput]) -> None:
        """Expand each live beam by the candidates of its one-token output; keep the best."""
        candidates = []
        for beam, output in zip(self.beams, outputs):
            position = output.outputs[0].logprobs[0]  # type: ignore[index]
            for token_id, logprob in position.items():
                grown = BeamSearchSequence(
                    [*beam.tokens, token_id],
                    [*beam.logprobs, position],
                    beam.cum_logprob + logprob.logprob,
                    num_prompt_tokens=beam.num_prompt_tokens,
                )
                if token_id == self.eos and not self.params.ignore_eos:
                    grown.finish_reason = "stop"
                    self.completed.append(grown)
                else:
                    candidates.append(grown)
        candidates.sort(key=self._score, reverse=True)
        self.beams = candidates[: self.params.beam_width]

    def result(self, decode: Callable[[BeamSearchSequence], str] | None) -> BeamSearchOutput:
        for beam in self.beams:
            beam.finish_reason = beam.finish_reason or "length"
        best = sorted(self.completed + self.beams, key=self._score, reverse=True)
        best = best[: self.params.beam_width]
        if decode is not None:
            for beam in best:
                beam.text = decode(beam)
        return BeamSearchOutput(best)

    def _score(self, beam: BeamSearchSequence) -> float:
        return beam_score(beam, self.eos, self.params.length_penalty)


def prompt_ids_of(prompt: Any, tokenizer: Any) -> list[int]:
    """Token ids of a beam-search prompt: text, or {"prompt": ...} / {"prompt_token_ids": ...}."""
    if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        return list(prompt["prompt_token_ids"])
    text = prompt["prompt"] if isinstance(prompt, dict) else prompt
    if tokenizer is None or not isinstance(text, str):
        raise ValueError("Beam search prompts are text or {'prompt_token_ids': [...]}.")
    return tokenizer.encode(text)
