"""A JSON schema's patterns are measured by what xgrammar writes out for them: their
repetitions copied (its time grows with the square of that; ``[a-z]{16000}`` took ~10 s)."""

from __future__ import annotations

import time

import pytest

from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output.pattern_size import (
    MAX_PATTERN_EXPANSION,
    MAX_SCHEMA_PATTERN_EXPANSION,
    check_schema_patterns,
    expanded_length,
)
from pagedllm.structured_output.spec import build_grammar_spec

CAP = MAX_SCHEMA_PATTERN_EXPANSION + 1
UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


@pytest.mark.parametrize(
    ("pattern", "length"),
    [
        ("abc", 3),
        (UUID, 38),
        (r"\d{4}-\d{2}-\d{2}", 10),  # an escape is one character
        ("[a-z]{16000}", 16000),  # a class is one character
        ("[]a]{3}", 3),  # a leading ] is a member
        ("(ab|cd){2000}", 8000),  # alternatives added: all are built
        ("(a{100}){40}", 4000),  # nested counts multiply
        ("a{2,}", 3),
        ("a{2,5}", 5),
        ("a*b+c?", 6),  # loops and options are not copies
        ("x{" + "9" * 5000 + "}", CAP),  # past int()'s digit limit: capped, not an error
        ("(a|b", 2),  # unbalanced: still measured
        ("a{ 8000}", 8000),  # xgrammar reads spaces inside the braces
        ("a{1, 3000 }", 3000),
        ("ab{0}", 2),  # counted once, not removed: sizes only grow, so they can saturate
        ("(?:[0-9a-f]{2}){400}", 800),  # a group's (?: is not matched text
        ("(?P<x>ab)(?=c)", 3),
        (r"\u0061{3}\x41", 4),  # one character each
        ("(" * 300 + "a" + "){999999999}" * 300, CAP),  # saturates: no huge integers
    ],
)
def test_expanded_length(pattern, length):
    assert expanded_length(pattern) == length


def object_with(*patterns: str) -> dict:
    fields = {f"f{i}": {"type": "string", "pattern": p} for i, p in enumerate(patterns)}
    return {"type": "object", "properties": fields}


def test_real_schemas_pass():
    check_schema_patterns(object_with(*[UUID] * 100))
    check_schema_patterns({"patternProperties": {"^x-[a-z]+$": {}}, "properties": {
        "pattern": {"type": "string"}}})  # fmt: skip
    check_schema_patterns({"properties": {"format": {"type": "object"}}})  # a name, no format
    check_schema_patterns(object_with(*[UUID] * 10) | {"format": {"not": "a string"}})


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        (object_with("[a-z]{16000}"), "expands to 16000 characters"),
        ({"type": "object", "patternProperties": {"(ab|cd){2000}": {}}}, "expands to 8000"),
        ({"type": "array", "items": {"propertyNames": {"pattern": "a{1025}"}}}, "expands to"),
        (object_with(*["a{1000}"] * 17), "patterns expand to 17000 characters together"),
        # A property may be named as a keyword: its schema is a schema all the same.
        *[
            (
                {"type": "object", "properties": {name: {"type": "string", "pattern": "a{5000}"}}},
                "expands to 5000",
            )
            for name in ("enum", "const", "default", "examples")
        ],
        (
            {"$defs": {"const": {"type": "string", "pattern": "a{4000}"}}, "$ref": "#/$defs/const"},
            "expands to 4000",
        ),
        # 5,000 email fields (230 KB) took 62 s and 2.5 GB to compile.
        (
            {
                "type": "object",
                "properties": {f"f{i}": {"type": "string", "format": "email"} for i in range(65)},
            },
            "65 strings of the formats",
        ),
    ],
)
def test_patterns_past_the_bounds_are_refused(schema, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_schema_patterns(schema)


def test_the_grammar_is_refused_before_it_is_built():
    import xgrammar  # noqa: F401  (imported before the clock starts)

    start = time.monotonic()
    with pytest.raises(ValueError, match="expands to more than 16384 characters"):
        build_grammar_spec(StructuredOutputsParams(json=object_with("[a-z]{64000}")))
    assert time.monotonic() - start < 1  # built, it takes minutes
    build_grammar_spec(
        StructuredOutputsParams(json=object_with(f"[a-z]{{{MAX_PATTERN_EXPANSION}}}"))
    )


def test_a_structural_tags_schemas_are_measured_too():
    tag = {"structures": [{"begin": "<f>", "schema": object_with("[a-z]{5000}"), "end": "</f>"}],
           "triggers": ["<f>"]}  # fmt: skip
    import json

    with pytest.raises(ValueError, match="expands to 5000"):
        build_grammar_spec(StructuredOutputsParams(structural_tag=json.dumps(tag)))


@pytest.mark.parametrize(
    "ref", ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data", "other.json#/a"]
)
def test_a_ref_outside_the_schema_is_refused(ref):
    """xgrammar would log a warning and leave the value unconstrained (a 200 that ignores
    the constraint); nothing is ever fetched."""
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
    with pytest.raises(ValueError, match="points outside the schema"):
        build_grammar_spec(StructuredOutputsParams(json=schema))
    tag = {"structures": [{"begin": "<f>", "schema": schema, "end": "</f>"}], "triggers": ["<f>"]}
    import json

    with pytest.raises(ValueError, match="points outside the schema"):
        build_grammar_spec(StructuredOutputsParams(structural_tag=json.dumps(tag)))


def test_a_ref_inside_the_schema_is_built():
    schema = {"$defs": {"n": {"type": "integer"}}, "type": "object",
              "properties": {"a": {"$ref": "#/$defs/n"}}, "required": ["a"]}  # fmt: skip
    assert build_grammar_spec(StructuredOutputsParams(json=schema)) is not None
