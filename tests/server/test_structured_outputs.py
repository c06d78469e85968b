"""Structured outputs over HTTP with the official openai client: response_format,
structured_outputs and the older guided_* fields, streamed and not; bad constraints are 400s
and the server keeps serving."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.engine.test_structured_outputs import ARITHMETIC, PERSON_SCHEMA
from tests.server.conftest import MODEL

ASK = [{"role": "user", "content": "Describe a user as JSON."}]
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
}


def test_response_format_json_schema_validates(openai_client) -> None:
    def ask(seed: int):
        return openai_client.chat.completions.create(
            model=MODEL, messages=ASK, response_format=JSON_SCHEMA_FORMAT, max_tokens=160,
            temperature=0.8, seed=seed,
        )  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    for reply in replies:
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON_SCHEMA)


def test_the_openai_parse_helper_gets_its_model(openai_client) -> None:
    class Pet(BaseModel):
        name: str
        legs: int

    reply = openai_client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "A pet, as JSON."}], response_format=Pet,
        max_tokens=80, temperature=0,
    )  # fmt: skip
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Pet)


def test_json_object_format(openai_client) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}, max_tokens=120,
        temperature=0,
    )  # fmt: skip
    if reply.choices[0].finish_reason == "stop":
        json.loads(reply.choices[0].message.content)


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"guided_json": PERSON_SCHEMA},
         lambda t: jsonschema.validate(json.loads(t), PERSON_SCHEMA)),
        ({"guided_regex": r"[0-9]{3}-[a-z]{3}"},
         lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{3}", t) or pytest.fail(t)),
        ({"guided_choice": ["left", "right"]}, lambda t: t in {"left", "right"} or pytest.fail(t)),
        ({"guided_grammar": ARITHMETIC}, lambda t: compile(t, "<output>", "eval")),
        ({"structured_outputs": {"choice": ["up", "down"]}},
         lambda t: t in {"up", "down"} or pytest.fail(t)),
        ({"structured_outputs": {"regex": "[a-c]{4}"}, "guided_decoding_backend": "xgrammar"},
         lambda t: re.fullmatch("[a-c]{4}", t) or pytest.fail(t)),
    ],
)  # fmt: skip
def test_extra_body_constraints_on_chat_and_completions(openai_client, extra, check) -> None:
    chat = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=160, temperature=0.9, seed=11, extra_body=extra
    )
    assert chat.choices[0].finish_reason == "stop"
    check(chat.choices[0].message.content)
    completion = openai_client.completions.create(
        model=MODEL, prompt="Answer:", max_tokens=160, temperature=0.9, seed=11, extra_body=extra
    )
    assert completion.choices[0].finish_reason == "stop"
    check(completion.choices[0].text)


def test_streaming_and_non_streaming_agree(openai_client) -> None:
    kwargs = dict(
        model=MODEL, messages=ASK, response_format=JSON_SCHEMA_FORMAT, max_tokens=160,
        temperature=0.8, seed=5,
    )  # fmt: skip
    whole = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = openai_client.chat.completions.create(**kwargs, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(streamed), PERSON_SCHEMA)
    pieces = openai_client.completions.create(
        model=MODEL, prompt="JSON:", max_tokens=160, temperature=0.8, seed=5, stream=True,
        extra_body={"guided_json": PERSON_SCHEMA},
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in pieces if c.choices)
    jsonschema.validate(json.loads(text), PERSON_SCHEMA)


def test_n_choices_each_follow_the_schema(openai_client) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, response_format=JSON_SCHEMA_FORMAT, max_tokens=160, n=3,
        temperature=1.0, seed=2,
    )  # fmt: skip
    assert len(reply.choices) == 3
    for choice in reply.choices:
        jsonschema.validate(json.loads(choice.message.content), PERSON_SCHEMA)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"guided_json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "json"),
        ({"guided_json": "{oops"}, "not valid JSON"),
        ({"guided_regex": "(a"}, "regex"),
        ({"guided_grammar": "root ::= nothing_here"}, "grammar"),
        ({"guided_choice": []}, "choice"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "exactly one"),
        ({"structured_outputs": {"regex": "a"}, "guided_regex": "a"}, "once"),
        ({"structured_outputs": {"pattern": "a"}}, "structured_outputs"),
        ({"guided_decoding_backend": "outlines", "guided_regex": "a"}, "outlines"),
        ({"response_format": {"type": "yaml"}}, "yaml"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
        ({"guided_json": {"type": "object"}, "guided_whitespace_pattern": " "},
         "whitespace_pattern"),
    ],
)  # fmt: skip
def test_bad_constraints_are_400s_and_the_server_keeps_serving(
    openai_client, extra: dict, message: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        openai_client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=8, extra_body=extra
        )
    ok = openai_client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    assert ok.choices[0].finish_reason == "length"


def test_beam_search_refuses_a_constraint(openai_client) -> None:
    with pytest.raises(openai.BadRequestError, match="beam"):
        openai_client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=8, n=2,
            extra_body={"use_beam_search": True, "guided_choice": ["a", "b"]},
        )  # fmt: skip


def test_a_regex_too_ambiguous_to_follow_is_a_400_and_others_are_served(openai_client) -> None:
    """Its mask's cost grows with every token; once one mask takes longer than the bound
    the request fails as its own input's doing: a 400 with the reason, not a 500."""
    for _ in range(2):  # the second is refused as it arrives (the constraint is known)
        with pytest.raises(openai.BadRequestError) as refused:
            openai_client.completions.create(
                model=MODEL, prompt="Write letters:", max_tokens=300, temperature=0.0,
                extra_body={"structured_outputs": {"regex": "([a-z]*)*" * 12}},
            )  # fmt: skip
        assert "too ambiguous (nested repetitions such as (a*)*" in refused.value.message
    fine = openai_client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert fine.choices[0].finish_reason == "length"
