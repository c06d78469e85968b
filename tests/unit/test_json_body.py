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


def test_many_short_strings_are_refused_without_being_recounted():
    """12 million two-letter strings: refused on the raw count (taking their separators
    out held a piece per string, 2 GB), in well under the parse's time."""
    import resource
    import time

    body = b'{"zz": [' + b'"ab",' * 12_000_000 + b'"ab"]}'
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(json.JSONDecodeError, match="JSON values"):
        parse_json(body)
    assert time.perf_counter() - start < 1.5
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024
