"""A request body's arrays and values are counted on its bytes before parsing: past a bound
it is a decode error (the server's 400), and brackets or commas inside strings never count."""

from __future__ import annotations

import json

import pytest

from pagedllm.entrypoints.openai.json_body import parse_json
from pagedllm.entrypoints.openai.limits import MAX_JSON_ARRAYS, MAX_JSON_VALUES


def test_arrays_past_the_bound_are_refused_and_at_it_parse():
    at = json.dumps({"zz": [[]] * (MAX_JSON_ARRAYS - 1)}).encode()
    assert len(parse_json(at)["zz"]) == MAX_JSON_ARRAYS - 1
    with pytest.raises(json.JSONDecodeError, match=f"more than {MAX_JSON_ARRAYS} JSON arrays"):
        parse_json(json.dumps({"zz": [[]] * MAX_JSON_ARRAYS}).encode())


def test_values_past_the_bound_are_refused():
    body = json.dumps({"ids": [0] * MAX_JSON_VALUES}).encode()
    with pytest.raises(json.JSONDecodeError, match=f"more than {MAX_JSON_VALUES} JSON values"):
        parse_json(body)
    assert len(parse_json(json.dumps({"ids": [0] * (MAX_JSON_VALUES - 8)}).encode())["ids"]) > 0


@pytest.mark.parametrize("piece", ["a, ", "[", "{", '\\", [', "\\,"])
def test_separators_inside_strings_are_not_counted(piece: str):
    text = piece * (MAX_JSON_VALUES // 2 + 1)
    assert parse_json(json.dumps({"prompt": text, "n": [1, 2]}).encode())["prompt"] == text
