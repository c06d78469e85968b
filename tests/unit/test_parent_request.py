"""A request's samples share its parameters' lists: one copy per sample of a long
allowed_token_ids (or bad words) held the engine thread for seconds at n=128."""

from __future__ import annotations

from pagedllm.engine.parent_request import ParentRequest
from pagedllm.sampling_params import SEED_LIMIT, SamplingParams


def test_samples_share_the_lists_and_own_their_seed_and_n():
    params = SamplingParams(n=3, seed=SEED_LIMIT - 1, allowed_token_ids=list(range(50_000)),
                            stop=["x"], logit_bias={5: 1.0})  # fmt: skip
    parent = ParentRequest("r", params)
    children = [parent.child_params(i) for i in range(3)]
    assert all(c.allowed_token_ids is params.allowed_token_ids for c in children)
    assert all(c.logit_bias is params.logit_bias and c.stop is params.stop for c in children)
    assert [c.seed for c in children] == [SEED_LIMIT - 1, 0, 1]
    assert [c.n for c in children] == [1, 1, 1] and params.n == 3 and params.seed == SEED_LIMIT - 1


def test_the_first_sample_alone_computes_the_prompts_logprobs():
    """Each sample computing them prefilled the prompt n times over the whole vocabulary
    (n=16 of a 2,000-token prompt with echo and logprobs: 156 s against 10.7 s)."""
    parent = ParentRequest("r", SamplingParams(n=3, prompt_logprobs=2))
    assert [parent.child_params(i).prompt_logprobs for i in range(3)] == [2, None, None]
