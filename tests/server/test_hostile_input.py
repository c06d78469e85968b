"""The reproducers of an outside probe: each gets a clear 4xx (or works safely), reads no
file, and leaves the server serving; a bystander's stream runs through all of them."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.server.conftest import API_KEY, MODEL
from tests.server.test_concurrency import wait_idle
from tests.server.test_errors import assert_error, post

HELLO = [{"role": "user", "content": "Hi"}]
JSON = {"Content-Type": "application/json"}


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 4, **fields}


@pytest.fixture(autouse=True)
def serving_afterwards(server):
    """After every reproducer: the server is healthy and serves a bystander."""
    yield
    assert_serving(server)


def assert_serving(server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    reply = post(
        server, "/v1/completions", json={"model": MODEL, "prompt": "1 2 3", "max_tokens": 2}
    )
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {"messages": HELLO, "chat_template": "/proc/self/cmdline"}),
        (
            "/tokenize",
            {"messages": HELLO, "chat_template_kwargs": {"chat_template": "/etc/passwd"}},
        ),
        ("/v1/chat/completions", chat(chat_template="/etc/passwd")),
        ("/v1/chat/completions", chat(chat_template="{{ messages }}")),
    ],
)
def test_request_templates_are_refused_without_the_flag(server, path, body):
    reply = post(server, path, json=body)
    assert_error(reply, 400, "--trust-request-chat-template")
    assert "root:" not in reply.text and API_KEY not in reply.text


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"best_of": 2147483648}, "best_of", "--max-n"),
        ({"best_of": 2**63}, "best_of", "--max-n"),
        ({"n": 10000}, "n", "--max-n"),
        ({"seed": 2**70}, "seed", "2**64"),
        ({"seed": -5}, "seed", "2**64"),
        ({"top_logprobs": 5, "logprobs": True, "prompt_logprobs": -1}, None, "max_logprobs"),
        ({"temperature": True}, "temperature", "number"),
        ({"max_tokens": "5"}, "max_tokens", "integer"),
        ({"stop": [1]}, None, "string"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
        ({"stop": ["x" * 3000]}, "stop", "2048"),
        ({"stop_token_ids": [1] * 5000}, "stop_token_ids", "at most 4096"),
    ],
)
def test_chat_parameters_are_checked_at_admission(server, fields, param, fragment):
    assert_error(
        post(server, "/v1/chat/completions", json=chat(**fields)), 400, fragment, param=param
    )


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"logprobs": 1.5}, "integer"),
        ({"logit_bias": [1, 2]}, "dictionary"),
        ({"bad_words": [5]}, "string"),
        ({"top_k": True}, "integer"),
        ({"stop": [1]}, "string"),
        ({"skip_special_tokens": 0}, "boolean"),
        ({"logprobs": -1}, "max_logprobs"),
        ({"structured_outputs": {"jsn": {}}}, "structured_outputs"),
    ],
)
def test_generate_fields_are_typed_like_every_endpoint(server, fields, fragment):
    assert_error(post(server, "/generate", json={"prompt": "Hi", **fields}), 400, fragment)


@pytest.mark.parametrize("field", ["bad_words_token_ids", "all_stop_token_ids"])
def test_engine_internals_named_in_a_request_are_ignored(server, field):
    """SamplingParams' derived fields are not request fields: unknown to the API, so ignored
    (and logged once) like any unknown field; a huge id there reaches nothing."""
    body = {"prompt": "Hi", "max_tokens": 2, "temperature": 0, field: [[10**9]]}
    reply = post(server, "/generate", json=body)
    assert reply.status_code == 200
    plain = post(server, "/generate", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0})
    assert reply.json() == plain.json()


def test_generate_still_generates(server):
    reply = post(server, "/generate", json={"prompt": "1 2 3", "max_tokens": 3, "seed": 2**64 - 1})
    assert reply.status_code == 200 and reply.json()["text"][0].startswith("1 2 3")


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'),
        ("/v1/completions", b'{"prompt": "a\\udfffb"}'),
        ("/tokenize", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'),
        ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}'),
        ("/v1/completions", b'{"prompt": "hi", "top_p": Infinity}'),
    ],
)
def test_invalid_unicode_and_json_constants_are_400(server, path, raw):
    assert_error(post(server, path, content=raw, headers=JSON), 400, "Malformed JSON")


def called(arguments: str) -> list[dict]:
    """A conversation whose assistant turn called a tool with ``arguments``."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return [*HELLO, {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}]  # fmt: skip


def nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        # Code past the parser recursed per level: 500s (RecursionError) before the bound.
        ("/v1/chat/completions", chat(chat_template_kwargs=nested(900)), "nests deeper than 128"),
        ("/tokenize", {"messages": HELLO, "chat_template_kwargs": nested(900)}, "nests deeper"),
        ("/v1/completions", {"prompt": "Hi", "guided_json": nested(200)}, "nests deeper"),
        # A schema sent as a string is parsed past the body's parser.
        ("/v1/completions", {"prompt": "Hi", "guided_json": "[" * 300 + "]" * 300}, "nests"),
        # Compiling grows faster than the constraint's size (40,000 choices: 13 s, holding
        # one of the two compile threads every constrained request needs).
        ("/v1/completions", {"prompt": "Hi", "guided_choice": [f"w{i:06d}" for i in range(40_000)]},
         "PAGEDLLM_MAX_GRAMMAR_BYTES"),
        # A tool call's arguments are JSON text inside the body, parsed past its parser.
        ("/v1/chat/completions", chat(messages=called("[" * 900 + "]" * 900)), "nests deeper"),
        ("/tokenize", {"messages": called("[" * 300 + "]" * 300)}, "nests deeper"),
        ("/v1/chat/completions", chat(messages=[{**HELLO[0], "tool_calls": 5}]),
         "tool_calls must be a list"),
        ("/tokenize", {"messages": [{**HELLO[0], "tool_calls": True}]}, "must be a list"),
        # 250 bytes whose grammar took ~10 s to build, on a thread every request shares.
        ("/v1/chat/completions", chat(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {
                "a": {"type": "string", "pattern": "[a-z]{16000}"}}}}}),
         "expands to 16000 characters"),
        # Each object is validated on the event loop: 1.5 million messages held it 7 s.
        ("/v1/chat/completions", chat(messages=[{"role": "user", "content": ""}] * 70_000),
         "more than 65536 JSON objects"),
        # No objects, but a validation error each: 4 s and 1.3 GB of the loop for a million.
        ("/v1/chat/completions", chat(messages=[1] * 1_000_000), "at most 65536 items"),
        # One object of many keys: 4.6 million held the loop 3.3 s.
        ("/v1/completions", {"prompt": "Hi", "logit_bias": {str(i): 0 for i in range(600_000)}},
         "more than 524288 keys"),
        # xgrammar left a remote reference unconstrained: a 200 that ignored the schema.
        ("/v1/chat/completions", chat(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"$ref": "file:///etc/passwd"}}}), "points outside the schema"),
        # The typed vLLM fields of this change: a wrong type names the field.
        ("/v1/chat/completions", chat(documents=[{"title": 5}]), "documents"),
        ("/v1/completions", {"prompt": "Hi", "return_tokens_as_token_ids": "maybe"},
         "return_tokens_as_token_ids"),
        # Built before any model sees them: 21 million empty lists in 63 MB took 3 GB.
        ("/v1/completions", {"prompt": "Hi", "zz": [[]] * 70_000}, "more than 65536 JSON arrays"),
        ("/v1/completions", {"prompt": "Hi", "zz": [0] * 4_200_000},
         "more than 4194304 JSON values"),
    ],
    ids=["chat-kwargs", "tokenize-kwargs", "schema", "schema-text", "choices", "call-args",
         "tokenize-call-args", "calls-not-a-list", "tokenize-calls-not-a-list", "pattern",
         "messages", "scalar-messages", "keys", "remote-ref", "documents",
         "tokens-as-ids", "arrays",
         "values"],
)  # fmt: skip
def test_deep_or_large_values_are_400(server, path, body, fragment):
    body = {"model": MODEL, **body}
    assert_error(post(server, path, json=body), 400, fragment)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # Read as unset, these ran to the end of the context (with ignore_eos: minutes).
        ("/v1/chat/completions", chat(max_completion_tokens=0)),
        ("/v1/chat/completions", chat(use_beam_search=True, n=0)),
        ("/v1/responses", {"input": "Hi", "max_output_tokens": 0}),
    ],
    ids=["max-completion-tokens", "beam-n", "max-output-tokens"],
)
def test_a_zero_count_is_refused_not_read_as_unset(server, path, body):
    assert_error(post(server, path, json={"model": MODEL, **body}), 400, "must be at least 1")


def test_anthropic_blocks_count_as_objects(server):
    blocks = [{"type": "text", "text": ""}] * 70_000
    body = {"model": MODEL, "messages": [{"role": "user", "content": blocks}]}
    reply = post(server, "/v1/messages/count_tokens", json=body)
    assert reply.status_code == 400 and "more than 65536 JSON objects" in reply.text


def completion(**fields) -> dict:
    return {"model": MODEL, "max_tokens": 2, **fields}


@pytest.mark.parametrize(
    ("body", "fragment", "param"),
    [
        # 3 KB: 64,000 sequences, past the per-request bound (--max-n) that n alone respects.
        (completion(prompt=[[5]] * 500, n=128), "500 prompts x 128 samples", None),
        # Past a 64-bit integer: the engine's messages carried it, and failed (a 500).
        (completion(prompt="Hi", priority=10**30), "priority must be an integer in", None),
        (completion(prompt="Hi", priority=-(10**100)), "priority must be an integer in", None),
        # Under first-come-first-served (the default) a priority was read and ignored.
        (completion(prompt="Hi", priority=5), "needs priority scheduling", None),
        # Token ids checked as one kind: a union that tried each built an error per item.
        (completion(prompt=[5] * 3_000_000), "maximum model length", None),
        (completion(prompt=[5, 6, "x"]), "prompt[2]: Input should be a valid integer", "prompt"),
        (completion(prompt=[True]), "prompt must be a string, a list of strings", "prompt"),
        # Text that could never fit the context is refused before the tokenizer sees it.
        (completion(prompt="hello " * 5_000_000), "more than the model's context could hold",
         None),
        # Within that, but 4 tokens a character: counted in parts, not tokenized whole.
        (completion(prompt="\U0001f600" * 200_000), "counted in parts", None),
    ],
    ids=["prompts-x-n", "priority", "negative-priority", "fcfs-priority", "ids", "mixed-ids",
         "bool-ids", "text", "emoji"],
)  # fmt: skip
def test_sizes_and_numbers_past_their_bounds_are_400(server, body, fragment, param):
    start = time.monotonic()
    assert_error(post(server, "/v1/completions", json=body), 400, fragment, param=param)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("request_id", "fragment"),
    [("abc\nINFO 01-01 00:00:00 [fake.py:1] FORGED", "should match pattern"),
     ("x" * 257, "at most 256 characters")],
)  # fmt: skip
def test_request_ids_are_short_and_printable(server, request_id, fragment):
    """A request id is echoed in every chunk and logged: a newline in it forged log lines,
    1 MiB of it made 100 MB of stream."""
    reply = post(server, "/v1/completions", json=completion(prompt="Hi", request_id=request_id))
    assert_error(reply, 400, fragment)
    assert "FORGED" not in server.logs()


def test_an_oversized_request_id_header_is_400(server):
    reply = post(server, "/v1/completions", json=completion(prompt="Hi"),
                 headers={"X-Request-Id": "r" * 257})  # fmt: skip
    assert_error(reply, 400, "X-Request-Id is 257 bytes")
    reply = post(server, "/v1/completions", json=completion(prompt="Hi"),
                 headers={"X-Request-Id": "trace-1"})  # fmt: skip
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "trace-1"


def test_detokenize_is_bounded(server):
    reply = post(server, "/detokenize", json={"model": MODEL, "tokens": [5] * 131_073})
    assert_error(reply, 400, "decodes at most 131072", param="tokens")
    reply = post(server, "/detokenize", json={"model": MODEL, "tokens": [5] * 131_072})
    assert reply.status_code == 200 and len(reply.json()["prompt"]) > 0
    reply = post(server, "/detokenize", json={"model": MODEL, "tokens": [5, 10**9]})
    assert_error(reply, 400, "out of vocabulary", param="tokens")


def test_a_long_text_to_truncate_keeps_its_tail(server):
    """With truncate_prompt_tokens the text past what the context could hold is cut from
    its start before tokenizing: the kept tokens are the last ones either way."""
    body = completion(prompt="hello " * 5_000_000 + "1 2 3 4", truncate_prompt_tokens=4,
                      max_tokens=1, echo=True)  # fmt: skip
    reply = post(server, "/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize("penalty", [1e308, -1e308])
def test_extreme_length_penalties_rank_beams(server, penalty):
    body = completion(prompt="Hi", use_beam_search=True, n=2, length_penalty=penalty)
    reply = post(server, "/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["choices"]) == 2


@pytest.mark.parametrize(
    ("part", "fragment"),
    [({"type": "text"}, "'text' is missing"), ({"type": "text", "text": 5}, "'text' is int"),
     ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "only text parts")],
)  # fmt: skip
def test_content_parts_are_text_with_text(server, part, fragment):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, part]}]
    assert_error(post(server, "/v1/chat/completions", json=chat(messages=messages)), 400, fragment)
    fine = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert post(server, "/v1/chat/completions", json=chat(messages=fine)).status_code == 200


def test_paired_surrogates_are_fine(server):
    raw = b'{"model": "%s", "prompt": "smile \\ud83d\\ude00", "max_tokens": 1}' % MODEL.encode()
    assert post(server, "/v1/completions", content=raw, headers=JSON).status_code == 200


def test_chat_template_kwargs_with_argument_names(server):
    for kwargs in ({"add_generation_prompt": False}, {"tools": []}, {"enable_thinking": False}):
        reply = post(server, "/v1/chat/completions", json=chat(chat_template_kwargs=kwargs))
        assert reply.status_code == 200, reply.text
    assert_error(
        post(server, "/v1/chat/completions", json=chat(chat_template_kwargs={"messages": []})),
        400,
        "messages",
    )


def test_small_http_items(server):
    completions = {"model": MODEL, "prompt": "Hi"}
    assert_error(post(server, "/v1/completions", json={**completions, "max_tokens": 0}), 400,
                 "max_tokens", param="max_tokens")  # fmt: skip
    empty = post(server, "/v1/chat/completions", content=b"", headers=JSON)
    assert_error(empty, 400, "body is empty")
    with server.client() as http:
        wrong_method = http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    lower = httpx.post(f"{server.url}/v1/completions", json={**completions, "max_tokens": 1},
                       headers={"Authorization": f"bearer {API_KEY}"}, timeout=60)  # fmt: skip
    assert lower.status_code == 200, lower.text
    assert_error(post(server, "/detokenize", json={"tokens": [True]}), 400, "integer")
    schema = httpx.get(f"{server.url}/openapi.json").json()
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    assert "422" not in operation["responses"] and "400" in operation["responses"]


def test_a_bystander_stream_survives_every_reproducer(server, openai_client):
    """The reproducers that used to abort every stream in flight, sent while one runs."""
    received: list[str] = []
    finish: list[str | None] = []

    def bystander() -> None:
        stream = openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count from one to fifty."}],
            max_tokens=60, stream=True, temperature=0.0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
                finish.append(chunk.choices[0].finish_reason)

    thread = threading.Thread(target=bystander)
    thread.start()
    while not received and thread.is_alive():
        time.sleep(0.05)
    for bad in ({"seed": 2**70}, {"best_of": 2**31}, {"n": 10000}):
        assert post(server, "/v1/chat/completions", json=chat(**bad)).status_code == 400
    for bad in ({"logprobs": 1.5}, {"bad_words": [5]}):
        assert post(server, "/generate", json={"prompt": "Hi", **bad}).status_code == 400
    thread.join(timeout=120)
    assert finish[-1] == "length" and len("".join(received)) > 0
    assert_serving(server)
    wait_idle(server)


@pytest.mark.slow
def test_health_answers_while_a_5mb_prompt_is_processed(server):
    text = "hello world " * 440_000  # ~5 MB, about a million tokens: tokenized, then refused
    result: dict = {}

    def send() -> None:
        with server.client() as http:
            # A completion's prompt: a chat this long is refused at its render, before the
            # tokenizer (test_server_limits' bounded templates).
            body = {"model": MODEL, "prompt": text, "max_tokens": 4}
            result["reply"] = http.post("/v1/completions", json=body)

    thread = threading.Thread(target=send)
    thread.start()
    worst = 0.0
    while thread.is_alive():
        start = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.05)
    assert_error(result["reply"], 400, "maximum model length")
    assert worst < 1.0, f"/health took {worst:.2f} s while the prompt was processed"
    assert_serving(server)


def test_client_request_ids_cannot_collide(server):
    """Two clients naming the same request_id both run; each reply echoes it."""
    results: list[httpx.Response] = []

    def send() -> None:
        results.append(post(server, "/v1/chat/completions", json=chat(request_id="mine")))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200, 200]
    assert {r.json()["id"] for r in results} == {"mine"}


def test_metadata_is_bounded_and_echoed(server):
    reply = post(server, "/v1/chat/completions", json=chat(metadata={"team": "search"}))
    assert reply.status_code == 200 and reply.json()["metadata"] == {"team": "search"}
    many = {f"k{i}": "v" for i in range(17)}
    assert_error(post(server, "/v1/chat/completions", json=chat(metadata=many)), 400, "16")


@pytest.mark.parametrize("field", ["cache_salt", "prompt_cache_key"])
def test_a_long_cache_salt_is_refused_at_admission(server, field):
    """The salt is hashed into every block's hash on the engine core: a megabyte of it would
    cost everyone; at most 1024 characters get in."""
    reply = post(server, "/v1/chat/completions", json=chat(**{field: "s" * 1_000_000}))
    assert_error(reply, 400, field)
    assert post(server, "/v1/chat/completions", json=chat(**{field: "s" * 1024})).status_code == 200
    assert_serving(server)
