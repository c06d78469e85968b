"""Tool calling over HTTP with the official openai client: named and required choices
always yield calls whose arguments validate; auto choice with the hermes parser; streamed
tool-call deltas; tool results sent back; tools reach the chat template."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.server.conftest import MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 30}},
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER, SEARCH]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def assert_valid_calls(calls) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


@pytest.mark.parametrize("seed", range(6))
def test_named_tool_choice_always_yields_a_valid_call(openai_client, seed: int) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=120,
        temperature=1.0, seed=seed,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"  # as OpenAI and vLLM: the call was forced
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    assert choice.message.content is None
    assert_valid_calls(choice.message.tool_calls)


@pytest.mark.parametrize("seed", range(6))
def test_required_tool_choice_always_yields_valid_calls(openai_client, seed: int) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
        temperature=1.0, seed=seed,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls)
    ids = [c.id for c in choice.message.tool_calls]
    assert len(set(ids)) == len(ids)


def test_parallel_tool_calls_false_gives_one_call(openai_client) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
        parallel_tool_calls=False, temperature=0,
    )  # fmt: skip
    assert len(reply.choices[0].message.tool_calls) == 1


def accumulate(chunks) -> tuple[str, dict[int, dict], str | None]:
    """Content, calls (merged per index, as an OpenAI client does) and the finish reason."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                call["id"] = delta.id
                assert delta.type == "function"
            if delta.function.name:
                call["name"] = delta.function.name
            call["arguments"] += delta.function.arguments or ""
    return content, calls, finish


@pytest.mark.parametrize("tool_choice", [NAMED, "required"])
def test_streamed_tool_calls_match_the_whole_response(openai_client, tool_choice) -> None:
    kwargs = dict(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=300,
        temperature=0.9, seed=1,
    )  # fmt: skip
    reply = openai_client.chat.completions.create(**kwargs).choices[0]
    expected = "stop" if tool_choice == NAMED else "tool_calls"  # a named call is forced
    assert reply.finish_reason == expected
    whole = reply.message.tool_calls
    content, calls, finish = accumulate(
        openai_client.chat.completions.create(**kwargs, stream=True)
    )
    assert finish == expected and content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole
    ]
    assert all(c["id"].startswith("chatcmpl-tool-") for c in calls.values())


def test_the_openai_stream_helper_assembles_tool_calls(openai_client) -> None:
    with openai_client.chat.completions.stream(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=120,
        temperature=0,
    ) as stream:  # fmt: skip
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    assert_valid_calls(final.choices[0].message.tool_calls)


# Output forced into the hermes format (through a regex constraint) to exercise the parser.
HERMES_CALL = (
    r'I will check\.<tool_call>\{"name": "get_weather", "arguments": '
    r'\{"city": "(Paris|Rome)", "unit": "celsius"\}\}</tool_call>'
)


def test_auto_tool_choice_parses_hermes_calls(openai_client) -> None:
    kwargs = dict(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto", max_tokens=80, temperature=0,
        extra_body={"guided_regex": HERMES_CALL},
    )  # fmt: skip
    choice = openai_client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I will check."
    assert_valid_calls(choice.message.tool_calls)
    content, calls, finish = accumulate(
        openai_client.chat.completions.create(**kwargs, stream=True)
    )
    assert (content, finish) == ("I will check.", "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in choice.message.tool_calls
    ]


def test_auto_tool_choice_without_a_call_is_plain_text(openai_client) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], tools=TOOLS,
        max_tokens=8, temperature=0,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.message.tool_calls == [] and choice.message.content
    assert choice.finish_reason in {"stop", "length"}


def test_tool_results_go_back_to_the_model(openai_client) -> None:
    first = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=120, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8,
        temperature=0,
    )  # fmt: skip
    assert reply.choices[0].message.content


def test_the_chat_template_receives_tools_and_decoded_arguments(limited) -> None:
    """A request template (the ``limited`` server trusts them; its tokenizer is
    one token per character)."""
    template = (
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}{% if m.tool_calls %}"
        "{{ m.tool_calls[0].function.arguments.city }}{% else %}{{ m.content }}{% endif %}"
        "{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    with limited.client() as client:
        body = {"messages": messages, "tools": TOOLS, "chat_template": template,
                "add_generation_prompt": False, "return_token_strs": True}  # fmt: skip
        tokens = client.post("/tokenize", json=body).json()["tokens"]
        text = client.post("/detokenize", json={"tokens": tokens}).json()
    assert text["prompt"] == "[get_weather][search]weather?Lyonsunny"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "not in tools"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "name"),
        ({"tools": TOOLS, "tool_choice": NAMED, "response_format": {"type": "json_object"}},
         "cannot be combined"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400s(openai_client, kwargs: dict, message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        openai_client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, **kwargs)


def test_a_template_that_cannot_render_the_messages_is_a_400(limited) -> None:
    body = {"messages": ASK, "max_tokens": 4,
            "chat_template": "{{ raise_exception('tools are not supported') }}"}  # fmt: skip
    with limited.client() as client:
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 400
        assert "tools are not supported" in reply.json()["error"]["message"]
        body.pop("chat_template")
        assert client.post("/v1/chat/completions", json=body).status_code == 200
