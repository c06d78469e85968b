"""Logit bias, allowed token ids, bad words, min_tokens bans and user callables, each against
an independent reference (transformers' processors where they exist)."""

from __future__ import annotations

import random

import torch
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

from pagedllm.sample.logits_processors import bad_word_bans
from pagedllm.sample.sampler import process_logits
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.request_state import RequestState
from pagedllm.worker.sampling_inputs import build_sampling_metadata

VOCAB = 300


def state(params: SamplingParams, prompt: list[int], output: list[int]) -> RequestState:
    s = RequestState.create("r", prompt, params, [0], 0, torch.device("cpu"))
    s.token_ids += output
    return s


def processed(states: list[RequestState], logits: torch.Tensor) -> torch.Tensor:
    md = build_sampling_metadata(states, VOCAB, torch.device("cpu"))
    return process_logits(logits.clone(), md)


def test_logit_bias_matches_sequence_bias():
    torch.manual_seed(0)
    logits = torch.randn(2, VOCAB)
    bias = {5: 3.5, 17: -100.0, 250: 0.25}
    ours = processed(
        [state(SamplingParams(logit_bias=bias), [1], []), state(SamplingParams(), [1], [])], logits
    )
    reference = SequenceBiasLogitsProcessor({(t,): b for t, b in bias.items()})
    expected = reference(torch.tensor([[1]]), logits[:1].clone())
    torch.testing.assert_close(ours[0], expected[0])
    torch.testing.assert_close(ours[1], logits[1])


def test_allowed_token_ids_mask_everything_else():
    torch.manual_seed(1)
    logits = torch.randn(2, VOCAB)
    ours = processed(
        [
            state(SamplingParams(allowed_token_ids=[3, 9, 27]), [1], []),
            state(SamplingParams(), [1], []),
        ],
        logits,
    )
    allowed = {3, 9, 27}
    for token in range(VOCAB):
        if token in allowed:
            assert ours[0, token] == logits[0, token]
        else:
            assert ours[0, token] == float("-inf")
    torch.testing.assert_close(ours[1], logits[1])


def test_bad_words_match_no_bad_words_processor():
    rng = random.Random(2)
    words = [[7], [10, 11], [20, 21, 22], [30, 31]]
    for _ in range(200):
        output = [rng.choice([7, 10, 11, 20, 21, 22, 30, 31, 40]) for _ in range(rng.randint(0, 6))]
        ours = set(bad_word_bans(words, output))
        reference = NoBadWordsLogitsProcessor(words, eos_token_id=299)
        scores = reference(
            torch.tensor([output or [40]]) if output else torch.tensor([[40]]),
            torch.zeros(1, VOCAB),
        )
        expected = {int(t) for t in torch.nonzero(scores[0] == float("-inf")).flatten()}
        if not output:  # the reference needs one token of history; [40] matches no prefix
            expected = {w[0] for w in words if len(w) == 1}
        assert ours == expected, output


def test_bad_words_in_the_sampler_state():
    params = SamplingParams()
    params.bad_words_token_ids = [[10, 11], [7]]
    logits = torch.zeros(2, VOCAB)
    ours = processed([state(params, [1], [5, 10]), state(params, [1], [10, 5])], logits)
    assert ours[0, 11] == float("-inf") and ours[0, 7] == float("-inf")
    assert ours[1, 11] == 0 and ours[1, 7] == float("-inf")


def test_min_tokens_matches_min_new_tokens_processor():
    torch.manual_seed(3)
    logits = torch.randn(1, VOCAB)
    params = SamplingParams(min_tokens=4, stop_token_ids=[8, 9])
    params.all_stop_token_ids |= {2}
    for generated in range(6):
        output = [50] * generated
        ours = processed([state(params, [1, 1], output)], logits)
        reference = MinNewTokensLengthLogitsProcessor(2, 4, [2, 8, 9])
        expected = reference(torch.tensor([[1, 1, *output]]), logits.clone())
        torch.testing.assert_close(ours, expected)


def test_user_logits_processors_both_signatures():
    seen = {}

    def two(output_ids, logits):
        seen["two"] = list(output_ids)
        logits[42] += 1000
        return logits

    def three(prompt_ids, output_ids, logits):
        seen["three"] = (list(prompt_ids), list(output_ids))
        logits[43] += 2000
        return logits

    logits = torch.zeros(1, VOCAB)
    ours = processed([state(SamplingParams(logits_processors=[two, three]), [4, 5], [6])], logits)
    assert seen == {"two": [6], "three": ([4, 5], [6])}
    assert ours[0].argmax() == 43 and ours[0, 42] == 1000
