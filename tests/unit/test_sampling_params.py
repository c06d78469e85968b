"""SamplingParams: vLLM's validation, normalizations, clone and generation-config eos ids."""

from __future__ import annotations

import pytest

from pagedllm.sampling_params import (
    MIN_TEMPERATURE,
    RequestOutputKind,
    SamplingParams,
    SamplingType,
    StructuredOutputsParams,
)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0}, "n"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"presence_penalty": -2.01}, "presence_penalty"),
        ({"presence_penalty": 2.01}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": -0.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": -0.01}, "min_p"),
        ({"min_p": 1.01}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"stop": ""}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop": "end", "detokenize": False}, "stop"),
        ({"stop_token_ids": [3, -1]}, "stop_token_ids"),
        ({"stop_token_ids": [1] * 4097}, "stop_token_ids"),
        ({"stop_token_ids": [1, "2"]}, "stop_token_ids"),
        ({"allowed_token_ids": [1] * ((1 << 19) + 1)}, "allowed_token_ids"),
        ({"allowed_token_ids": [1.5]}, "allowed_token_ids"),
        ({"logprobs": -2}, "logprobs"),
        ({"prompt_logprobs": -2}, "prompt_logprobs"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    ],
)
def test_out_of_range_field_raises_value_error_naming_it(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 1, "best_of": 1},
        {"n": 2, "best_of": 3},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"repetition_penalty": 1e-3},
        {"temperature": 0.0},
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"top_k": 0},
        {"top_k": 1},
        {"min_p": 0.0},
        {"min_p": 1.0},
        {"max_tokens": 1, "min_tokens": 1},
        {"max_tokens": None, "min_tokens": 100},
        {"stop_token_ids": [0, 7]},
        {"stop_token_ids": [1] * 4096},
        {"detokenize": False},
    ],
)
def test_boundary_values_are_accepted(kwargs: dict) -> None:
    SamplingParams(**kwargs)


def test_defaults_match_vllm() -> None:
    p = SamplingParams()
    assert (p.n, p.best_of, p.temperature, p.top_p, p.top_k, p.min_p) == (1, None, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.max_tokens, p.min_tokens, p.seed, p.ignore_eos) == (16, 0, None, False)
    assert p.stop == [] and p.stop_token_ids == [] and p.all_stop_token_ids == set()
    assert p.output_kind is RequestOutputKind.CUMULATIVE
    assert p.sampling_type is SamplingType.RANDOM
    assert not p.uses_penalties


def test_stop_string_becomes_a_list() -> None:
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]


def test_seed_minus_one_means_unseeded() -> None:
    p = SamplingParams(seed=-1)
    assert p.seed is None
    assert p.sampling_type is SamplingType.RANDOM
    assert SamplingParams(seed=0).sampling_type is SamplingType.RANDOM_SEED


def test_top_k_minus_one_means_disabled() -> None:
    assert SamplingParams(top_k=-1).top_k == 0


def test_logprobs_true_means_one_and_output_kind_becomes_the_enum() -> None:
    p = SamplingParams(logprobs=True, prompt_logprobs=True, output_kind=1)
    assert (p.logprobs, p.prompt_logprobs) == (1, 1)
    assert p.output_kind is RequestOutputKind.DELTA


@pytest.mark.parametrize("temperature", [1e-6, 1e-4, 5e-3])
def test_tiny_temperature_is_raised_to_the_minimum(temperature: float) -> None:
    p = SamplingParams(temperature=temperature)
    assert p.temperature == MIN_TEMPERATURE
    assert p.sampling_type is SamplingType.RANDOM


def test_temperature_at_or_above_the_minimum_is_kept() -> None:
    assert SamplingParams(temperature=MIN_TEMPERATURE).temperature == MIN_TEMPERATURE
    assert SamplingParams(temperature=0.7).temperature == 0.7


def test_greedy_resets_truncation_knobs() -> None:
    p = SamplingParams(temperature=0.0, top_p=0.5, top_k=7, min_p=0.3, seed=3)
    assert (p.top_p, p.top_k, p.min_p) == (1.0, 0, 0.0)
    assert p.sampling_type is SamplingType.GREEDY


def test_random_keeps_truncation_knobs() -> None:
    p = SamplingParams(temperature=0.8, top_p=0.5, top_k=7, min_p=0.3)
    assert (p.top_p, p.top_k, p.min_p) == (0.5, 7, 0.3)


def test_stop_token_ids_seed_all_stop_token_ids() -> None:
    assert SamplingParams(stop_token_ids=[5, 9]).all_stop_token_ids == {5, 9}


@pytest.mark.parametrize(
    ("kwargs", "uses"),
    [
        ({}, False),
        ({"presence_penalty": 0.1}, True),
        ({"frequency_penalty": -0.1}, True),
        ({"repetition_penalty": 1.2}, True),
    ],
)
def test_uses_penalties(kwargs: dict, uses: bool) -> None:
    assert SamplingParams(**kwargs).uses_penalties is uses


class CountingProcessor:
    """A logits processor with state: deep-copying it would split that state."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, token_ids: list[int], logits: object) -> object:
        self.calls += 1
        return logits


def test_clone_deep_copies_but_shares_logits_processors() -> None:
    processor = CountingProcessor()
    p = SamplingParams(stop=["x"], stop_token_ids=[4], logits_processors=[processor], seed=1)
    p.all_stop_token_ids.add(2)
    twin = p.clone()
    assert twin == p
    assert twin.stop is not p.stop and twin.stop_token_ids is not p.stop_token_ids
    assert twin.all_stop_token_ids is not p.all_stop_token_ids
    assert twin.logits_processors is not None and twin.logits_processors[0] is processor
    assert p.logits_processors == [processor]  # the original keeps its processors

    twin.stop.append("y")
    twin.stop_token_ids.append(8)
    twin.all_stop_token_ids.add(8)
    twin.logits_processors.append(print)
    assert p.stop == ["x"] and p.stop_token_ids == [4] and p.all_stop_token_ids == {2, 4}
    assert p.logits_processors == [processor]


def test_clone_without_logits_processors() -> None:
    p = SamplingParams(temperature=0.5)
    twin = p.clone()
    assert twin == p and twin is not p and twin.logits_processors is None


def test_generation_config_extra_eos_ids_become_stop_ids() -> None:
    p = SamplingParams(stop_token_ids=[7])
    p.update_from_generation_config({"eos_token_id": [2, 11, 12]}, model_eos_token_id=2)
    assert sorted(p.stop_token_ids) == [7, 11, 12]
    assert p.all_stop_token_ids == {7, 11, 12}


def test_generation_config_single_eos_id_int() -> None:
    p = SamplingParams()
    p.update_from_generation_config({"eos_token_id": 13}, model_eos_token_id=2)
    assert p.stop_token_ids == [13] and p.all_stop_token_ids == {13}


def test_generation_config_only_the_model_eos_adds_nothing() -> None:
    p = SamplingParams()
    p.update_from_generation_config({"eos_token_id": [2]}, model_eos_token_id=2)
    p.update_from_generation_config({}, model_eos_token_id=2)
    assert p.stop_token_ids == [] and p.all_stop_token_ids == set()


def test_generation_config_ignored_with_ignore_eos() -> None:
    p = SamplingParams(ignore_eos=True, stop_token_ids=[7])
    p.update_from_generation_config({"eos_token_id": [2, 11]}, model_eos_token_id=2)
    assert p.stop_token_ids == [7] and p.all_stop_token_ids == {7}


@pytest.mark.parametrize(
    "option", ["disable_fallback", "disable_any_whitespace", "disable_additional_properties"]
)
def test_structured_output_switches_are_booleans(option):
    with pytest.raises(ValueError, match=f"{option} must be true or false, got 'x'"):
        StructuredOutputsParams(regex="a", **{option: "x"})
    with pytest.raises(ValueError, match=f"{option} must be true or false, got 2"):
        StructuredOutputsParams(regex="a", **{option: 2})
    # What vLLM's lax validation reads as booleans, read the same.
    for given, read in ((True, True), ("true", True), (1, True), ("off", False), (0, False)):
        assert getattr(StructuredOutputsParams(regex="a", **{option: given}), option) is read


def test_json_object_is_a_switch_too():
    """A string was read by its truth: "no" (or "false") asked for a JSON object."""
    assert StructuredOutputsParams(json_object="yes").kind == "json_object"
    with pytest.raises(ValueError, match="got none"):
        StructuredOutputsParams(json_object="no")
    with pytest.raises(ValueError, match="json_object must be true or false, got 'x'"):
        StructuredOutputsParams(json_object="x")


def test_a_long_id_list_is_refused_before_its_ids_are_checked() -> None:
    """Counted first (a 64 MiB body holds ~30 million ids, each walked by every check, copy
    and set after this); the message names the count, not the list."""
    ids = [1] * 3_000_000
    ids[-1] = "x"
    with pytest.raises(
        ValueError, match=r"stop_token_ids must hold at most 4096 ids, got 3000000\.$"
    ):
        SamplingParams(stop_token_ids=ids)
    with pytest.raises(ValueError, match=r"got \['x'\] in it\.$"):
        SamplingParams(allowed_token_ids=ids[-100:])
    with pytest.raises(ValueError) as long_element:
        SamplingParams(stop_token_ids=[1, "y" * 100_000])
    assert len(str(long_element.value)) < 200


def test_a_bad_stop_token_id_list_is_not_echoed_whole() -> None:
    """The error names the first few bad ids and how many more, not the list (up to 4,096)."""
    with pytest.raises(ValueError) as raised:
        SamplingParams(stop_token_ids=[5] + [-1] * 4000)
    message = str(raised.value)
    assert "got -1, -1, -1 and 3997 more" in message and len(message) < 200
