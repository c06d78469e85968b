"""Teacher-forced quality of an engine configuration against a reference one: the bundled
SmolLM2 reads a fixed 512-token text (``data/quality_text.txt``, written for these tests)
and scores every next token; shared by the FP8 quality test and benchmarks/fp8_quality.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pagedllm import LLM, SamplingParams

TEXT = Path(__file__).parent / "data" / "quality_text.txt"
NUM_TOKENS = 512


@dataclass(frozen=True)
class Scores:
    top1: list[int]  # the most likely next token at each position
    logprobs: list[float]  # log p(actual next token) at each position

    @property
    def perplexity(self) -> float:
        return math.exp(-sum(self.logprobs) / len(self.logprobs))

    def agreement(self, reference: Scores) -> float:
        """Share of positions whose top-1 token is the reference's."""
        same = sum(a == b for a, b in zip(self.top1, reference.top1))
        return same / len(reference.top1)

    def perplexity_rise(self, reference: Scores) -> float:
        return self.perplexity / reference.perplexity - 1.0


def score(**engine_kwargs) -> Scores:
    """Scores of the bundled SmolLM2 built with ``engine_kwargs`` (float32 unless they say)."""
    engine_kwargs.setdefault("dtype", "float32")
    return score_engine(engine(**engine_kwargs))


def engine(**engine_kwargs) -> LLM:
    """The bundled SmolLM2 as the scores read it (a cache for one 512-token text)."""
    return LLM(kv_cache_memory_bytes="64M", max_model_len=1024, **engine_kwargs)


def score_engine(llm: LLM) -> Scores:
    """Scores of an engine built by ``engine`` (and perhaps changed since, as probes do)."""
    ids = llm.get_tokenizer()(TEXT.read_text())["input_ids"][:NUM_TOKENS]
    assert len(ids) == NUM_TOKENS, "the text is at least 512 tokens long"
    params = SamplingParams(max_tokens=1, prompt_logprobs=1)
    out = llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0]
    positions = out.prompt_logprobs[1:]  # position p scores token p (p >= 1)
    top1 = [next(t for t, lp in d.items() if lp.rank == 1) for d in positions]
    logprobs = [d[ids[p + 1]].logprob for p, d in enumerate(positions)]
    return Scores(top1, logprobs)
