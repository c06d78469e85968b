"""Client JSON nested past the bound is a ValueError, however deep, and never a
RecursionError (a 500 where the server's handlers or the grammar builder recurse)."""

from __future__ import annotations

import json

import pytest

from pagedllm import json_nesting


def test_depth_counts_containers():
    assert not json_nesting.deeper_than([[{"a": []}]], 4)
    assert json_nesting.deeper_than([[{"a": []}]], 3)
    assert not json_nesting.deeper_than("scalar", 0)
    assert not json_nesting.deeper_than([1, {"a": 2}, [3]], 2)
    # Containers among scalars are still followed (only scalars are skipped).
    assert json_nesting.deeper_than([1, 2, [3, [4]], 5], 2)
    assert not json_nesting.deeper_than([1, 2, [3, [4]], 5], 3)
    assert json_nesting.deeper_than({"a": 1, "b": {"c": [0]}}, 2)


@pytest.mark.parametrize("levels", [129, 5000, 100_000])
def test_deep_text_is_a_value_error(levels: int):
    with pytest.raises(ValueError, match="nests deeper than 128 levels") as raised:
        json_nesting.loads("[" * levels + "]" * levels, "the body")
    assert not isinstance(raised.value, json.JSONDecodeError)


def test_text_at_the_bound_parses_and_malformed_text_stays_a_decode_error():
    assert json_nesting.loads("[" * 128 + "]" * 128, "the body") is not None
    with pytest.raises(json.JSONDecodeError):
        json_nesting.loads("[1,", "the body")


def test_objects_reach_every_dict_whatever_its_key():
    value = {"a": [{"b": 1}, [{"c": {"d": 2}}]], "enum": {"e": []}}
    names = sorted(k for obj in json_nesting.objects(value) for k in obj)
    assert names == ["a", "b", "c", "d", "e", "enum"]
    assert list(json_nesting.objects([1, "x", [2]])) == []
