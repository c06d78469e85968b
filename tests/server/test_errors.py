"""Bad input gets an OpenAI-shaped error naming the problem; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import MODEL

HELLO = [{"role": "user", "content": "Hi"}]


def post(server, path: str, **kwargs) -> httpx.Response:
    with server.client() as http:
        return http.post(path, **kwargs)


def assert_error(reply: httpx.Response, status: int, *fragments: str, param: str | None = None):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("temperature", -1, "temperature"),
        ("top_p", 2.0, "top_p"),
        ("n", 0, "n"),
        ("presence_penalty", 5, "presence_penalty"),
        ("max_tokens", 0, "max_tokens"),
    ],
)
def test_out_of_range_values(server, field, value, param):
    reply = post(
        server, "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, field: value}
    )
    assert_error(reply, 400, param=param)


@pytest.mark.parametrize(
    "field, value",
    [
        ("store", True),
        ("modalities", ["text", "audio"]),
        ("service_tier", "flex"),
        # vLLM's: read by vLLM, nothing here acts on them
        ("logits_processors", ["pkg.Processor"]),
        ("vllm_xargs", {"k": 1}),
        ("kv_transfer_params", {"do_remote_decode": True}),
        ("mm_processor_kwargs", {"fps": 1}),
    ],
)
def test_unbuilt_fields_are_refused_by_name(server, field, value):
    reply = post(
        server, "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, field: value}
    )
    assert_error(reply, 400, field)


def test_unknown_fields_are_ignored_and_logged_once(server):
    """As vLLM: newer clients send fields this server does not know (here a nested one
    too); the request runs, and each name is logged once, not per request."""
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2, "temprature": 1,
            "safety_identifier": "u-1", "stream_options": {"include_usage": True, "x_new": 1},
            "stream": True}  # fmt: skip
    for _ in range(2):
        assert post(server, "/v1/chat/completions", json=body).status_code == 200
    logs = server.logs()
    assert logs.count("'temprature' of ChatCompletionRequest is not known") == 1
    assert logs.count("'safety_identifier' of ChatCompletionRequest") == 1
    assert logs.count("'x_new' of StreamOptions") == 1
    reply = post(server, "/v1/completions", json={"model": MODEL, "prompt": "Hi",
                                                  "max_tokens": 2, "temprature": 1})  # fmt: skip
    assert reply.status_code == 200
    assert "'temprature' of CompletionRequest" in server.logs()


def test_malformed_json_and_missing_fields(server):
    broken = post(
        server,
        "/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert_error(broken, 400, "Malformed JSON")
    missing = post(server, "/v1/chat/completions", json={"model": MODEL})
    assert_error(missing, 400, "messages")


def test_unknown_model_is_404(server):
    reply = post(server, "/v1/chat/completions", json={"model": "gpt-5", "messages": HELLO})
    assert_error(reply, 404, "gpt-5", param="model")


def test_prompt_longer_than_the_context(server):
    long_text = "word " * 3000
    reply = post(
        server,
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": long_text}]},
    )
    assert_error(reply, 400, "maximum model length of 2048")
    reply = post(server, "/v1/completions", json={"model": MODEL, "prompt": long_text})
    assert_error(reply, 400, "2048")


def test_completion_suffix_and_bad_tokens(server):
    assert_error(
        post(server, "/v1/completions", json={"model": MODEL, "prompt": "a", "suffix": "b"}),
        400,
        param="suffix",
    )
    assert_error(
        post(server, "/v1/completions", json={"model": MODEL, "prompt": [10**8]}),
        400,
        "out of vocabulary",
        param="prompt",
    )
    for field, value in (("allowed_token_ids", [10**8]), ("logit_bias", {"100000000": 1})):
        reply = post(server, "/v1/completions",
                     json={"model": MODEL, "prompt": "a", field: value})  # fmt: skip
        assert_error(reply, 400, "out of vocabulary", param=field)
    served = post(server, "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1})
    assert served.status_code == 200, served.text
    assert_error(post(server, "/detokenize", json={"tokens": [-1]}), 400, "out of vocabulary")
    assert_error(post(server, "/tokenize", json={}), 400)


def test_server_still_serves_after_errors(server, openai_client):
    for _ in range(3):
        post(server, "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "top_p": 9})
    reply = openai_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_sampling_surface_errors(server):
    chat = {"model": MODEL, "messages": HELLO}
    assert_error(
        post(server, "/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 50}),
        400,
        "max_logprobs",
    )
    assert_error(
        post(server, "/v1/chat/completions", json={**chat, "top_logprobs": 2}), 400, "logprobs"
    )
    assert_error(
        post(server, "/v1/chat/completions", json={**chat, "logit_bias": {"99999999": 1}}),
        400,
        "logit_bias",
    )
    # As vLLM: length_penalty without beam search is accepted and has no effect (logged).
    inert = {**chat, "length_penalty": 2.0, "max_tokens": 2}
    assert post(server, "/v1/chat/completions", json=inert).is_success
    assert "'length_penalty' of ChatCompletionRequest has no effect" in server.logs()
    assert_error(
        post(
            server, "/v1/chat/completions", json={**chat, "use_beam_search": True, "stream": True}
        ),
        400,
        "use_beam_search",
    )
    assert_error(
        post(
            server,
            "/v1/completions",
            json={"model": MODEL, "prompt": "a", "best_of": 3, "stream": True},
        ),
        400,
        "best_of",
    )
    assert_error(
        post(server, "/v1/completions", json={"model": MODEL, "prompt": "a", "logprobs": -1}),
        400,
        "logprobs",
    )


@pytest.mark.parametrize("field", ["logits_processors", "vllm_xargs"])
def test_vllm_fields_are_refused_in_completions_and_beam_search(server, field):
    value = ["pkg.Processor"] if field == "logits_processors" else {"k": 1}
    for extra in ({}, {"use_beam_search": True, "n": 2}):
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, field: value, **extra}
        assert_error(post(server, "/v1/completions", json=body), 400, field)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stream_options_need_stream(server, openai_client, path):
    """As vLLM and OpenAI: stream_options without stream: true is a 400 naming it (it was a
    200); null stream_options are no options, and a streamed request takes them."""
    body = {"model": MODEL, "max_tokens": 2}
    body.update({"messages": HELLO} if "chat" in path else {"prompt": "Hi"})
    options = {"include_usage": True}
    for stream in ({}, {"stream": False}, {"stream": None}):
        reply = post(server, path, json={**body, **stream, "stream_options": options})
        assert_error(reply, 400, "stream_options", "stream=True", param="stream_options")
        assert_error(post(server, path, json={**body, **stream, "stream_options": {}}), 400,
                     "stream_options")  # fmt: skip
        assert post(server, path, json={**body, **stream, "stream_options": None}).is_success
    with server.client() as http:
        streamed = {**body, "stream": True, "stream_options": options}
        with http.stream("POST", path, json=streamed) as reply:
            assert reply.status_code == 200
            assert '"usage":{' in "".join(reply.iter_text()).replace(" ", "")
    reply = openai_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert reply.choices[0].message.content is not None


@pytest.mark.parametrize(
    "field, path",
    [("seed", "/v1/chat/completions"), ("seed", "/v1/completions"),
     ("max_tokens", "/v1/chat/completions"), ("max_completion_tokens", "/v1/chat/completions"),
     ("top_k", "/v1/completions")],
)  # fmt: skip
def test_huge_integers_are_refused_without_echoing_them(server, field, path):
    """A seed of 10**400 made a 400 whose message held all 401 digits: the message now says
    how many digits, not what they are."""
    body = {"model": MODEL, "max_tokens": 2}
    body.update({"messages": HELLO} if "chat" in path else {"prompt": "Hi"})
    for value in (10**400, -(10**400)):
        reply = post(server, path, json={**body, field: value})
        assert_error(reply, 400, field, "out of range", "401 digits", param=field)
        assert len(reply.json()["error"]["message"]) < 200
    seeded = post(server, path, json={**body, "seed": 2**64 - 1})
    assert seeded.is_success, seeded.text
    assert_error(post(server, path, json={**body, "seed": 2**64}), 400, "seed", param="seed")


def test_max_completion_tokens_below_one_is_a_400_naming_it(server):
    """It said "max_tokens must be at least 1", naming a field the client did not send."""
    for value in (0, -3):
        body = {"model": MODEL, "messages": HELLO, "max_completion_tokens": value}
        reply = post(server, "/v1/chat/completions", json=body)
        assert_error(
            reply, 400, "max_completion_tokens must be at least 1", param="max_completion_tokens"
        )
    body = {"model": MODEL, "messages": HELLO, "max_completion_tokens": 1}
    assert post(server, "/v1/chat/completions", json=body).is_success
