"""Every endpoint, through the official openai client and raw HTTP."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.server.conftest import ALIASES, API_KEY, MODEL

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_models_lists_every_alias(openai_client):
    models = openai_client.models.list().data
    assert [m.id for m in models] == ALIASES
    card = models[0].model_dump()
    assert card["object"] == "model" and card["owned_by"] == "pagedllm"
    assert card["root"] == MODEL and card["max_model_len"] == 2048 and card["created"] > 0


def test_chat_completion(openai_client):
    reply = openai_client.chat.completions.create(model="qwen2.5-7b", messages=HELLO, max_tokens=24)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "qwen2.5-7b"
    assert reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_seed_and_greedy_are_reproducible(openai_client):
    def ask(**kw):
        r = openai_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, **kw)
        return r.choices[0].message.content

    assert ask(temperature=0.9, seed=42) == ask(temperature=0.9, seed=42)
    assert ask(temperature=0) == ask(temperature=0)


def test_chat_stream_shape(server):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 12, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with (
        server.client() as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    plain = {**body, "stream": False, "stream_options": None}  # options need stream (a 400)
    with server.client() as http:
        full = http.post("/v1/chat/completions", json=plain).json()
    assert text == full["choices"][0]["message"]["content"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_stats_on_every_chunk(server, path):
    """stream_options.continuous_usage_stats: each chunk carries the usage so far, on both
    endpoints (with two prompts on /v1/completions: each chunk its own prompt's); chat's
    opening role chunk, sent before the engine has counted anything, does not."""
    body = {"model": MODEL, "max_tokens": 5, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True,
                                                   "continuous_usage_stats": True}}  # fmt: skip
    if path == "/v1/completions":
        body["prompt"] = ["Once upon a time", "Hi"]
    else:
        body["messages"] = HELLO
    with server.client() as http, http.stream("POST", path, json=body) as response:
        chunks = [json.loads(e) for e in sse_events(response)[:-1]]
    if path == "/v1/chat/completions":
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        chunks = chunks[1:]
    assert all(c["usage"] is not None for c in chunks)
    token_chunks = [c for c in chunks if c["choices"] and c["usage"]["completion_tokens"] > 0]
    final = chunks[-1]["usage"]
    assert final["completion_tokens"] == 5 * (2 if path == "/v1/completions" else 1)
    per_choice: dict[int, list[int]] = {}
    for c in token_chunks:
        per_choice.setdefault(c["choices"][0]["index"], []).append(c["usage"]["completion_tokens"])
    assert all(counts == sorted(counts) and counts[-1] == 5 for counts in per_choice.values())


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_return_token_ids(server, path):
    """vLLM's return_token_ids: the prompt's ids and each choice's, whole or streamed (the
    prompt's once, then each chunk its new ids), agreeing with /tokenize."""
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0, "return_token_ids": True}
    if path == "/v1/completions":
        body["prompt"] = "Once upon a time"
    else:
        body["messages"] = HELLO
    with server.client() as http:
        whole = http.post(path, json=body).json()
        with http.stream("POST", path, json={**body, "stream": True}) as response:
            chunks = [json.loads(e) for e in sse_events(response)[:-1]]
        fields = {k: v for k, v in body.items() if k in ("prompt", "messages", "model")}
        tokenized = http.post("/tokenize", json=fields)
    choice = whole["choices"][0]
    prompt_ids = choice["prompt_token_ids"] if "prompt" in body else whole["prompt_token_ids"]
    assert prompt_ids == tokenized.json()["tokens"]
    assert len(choice["token_ids"]) == whole["usage"]["completion_tokens"] == 4
    streamed = [c for c in chunks if c["choices"] and "token_ids" in c["choices"][0]]
    assert [t for c in streamed for t in c["choices"][0]["token_ids"]] == choice["token_ids"]
    sent = [c.get("prompt_token_ids") or c["choices"][0].get("prompt_token_ids") for c in chunks]
    assert [ids for ids in sent if ids] == [prompt_ids]


def test_request_id_headers_and_quiet_probes(server):
    """--enable-request-id-headers: X-Request-Id on every response (the client's own when
    sent); --disable-access-log-for-endpoints /health,/ping: probes leave no access line."""
    with server.client() as http:
        mine = http.get("/v1/models", headers={"X-Request-Id": "trace-42"})
        fresh = http.get("/v1/models")
        for _ in range(3):
            assert http.get("/health").status_code == 200
    assert mine.headers["x-request-id"] == "trace-42"
    assert len(fresh.headers["x-request-id"]) == 32
    logs = server.logs()
    assert '"GET /v1/models HTTP/1.1" 200' in logs
    assert '"GET /health HTTP/1.1"' not in logs


def test_content_deltas_carry_no_reasoning_field(openai_client):
    # ../shared/seeds/001 tells reasoning from content with hasattr(delta, "reasoning_content").
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, stream=True
    )
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    content = [d for d in deltas if d.content]
    assert content and not any(hasattr(d, "reasoning_content") for d in content)


def test_n_choices(openai_client):
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, n=3, max_tokens=8, temperature=1.0, seed=1
    )
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1  # distinct samples
    assert reply.usage.completion_tokens > 0
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, n=2, max_tokens=6, stream=True
    )
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_extra_body_fields(openai_client):
    reply = openai_client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_completion_tokens=12,
        extra_body={
            "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 4,
            "stop_token_ids": [2], "ignore_eos": False, "skip_special_tokens": False,
            "include_stop_str_in_output": False, "chat_template_kwargs": {"unused_flag": True},
            "add_generation_prompt": True, "priority": 0, "request_id": "my-chat-id",
        },
    )  # fmt: skip
    assert reply.id == "my-chat-id"
    assert reply.usage.completion_tokens >= 4
    ended = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
    )
    assert ended.usage.completion_tokens == 40 and ended.choices[0].finish_reason == "length"


def test_stop_strings_and_continue_final_message(openai_client):
    free = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=20, temperature=0
    )
    text = free.choices[0].message.content
    stop = text[3:6]
    cut = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=20, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    resumed = openai_client.chat.completions.create(
        model=MODEL,
        messages=[*HELLO, {"role": "assistant", "content": "Hello"}],
        max_tokens=6,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False, "echo": True},
    )
    assert resumed.choices[0].message.content.startswith("Hello")


def test_max_tokens_larger_than_the_context_is_clamped(openai_client):
    # ../shared/seeds/000 asks for max_tokens=50000 from a smaller model: the reply is cut
    # by the context length, as with vLLM's server.
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=50000, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_completions(openai_client, server):
    one = openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert one.object == "text_completion" and one.choices[0].text
    assert one.usage.completion_tokens == 5
    many = openai_client.completions.create(
        model=MODEL, prompt=["One, two,", "A, B,"], max_tokens=4, n=2, temperature=0
    )
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text  # greedy: both samples agree
    ids = openai_client.completions.create(
        model=MODEL, prompt=[504, 3575, 282], max_tokens=3, temperature=0
    )
    nested = openai_client.completions.create(
        model=MODEL, prompt=[[504, 3575, 282]], max_tokens=3, temperature=0
    )
    assert ids.choices[0].text == nested.choices[0].text
    echoed = openai_client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=2, echo=True, temperature=0
    )
    assert echoed.choices[0].text.startswith("Hello")
    body = {
        "model": MODEL,
        "prompt": "Count: 1, 2,",
        "max_tokens": 6,
        "stream": True,
        "temperature": 0,
    }
    with server.client() as http, http.stream("POST", "/v1/completions", json=body) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    plain = openai_client.completions.create(
        model=MODEL, prompt="Count: 1, 2,", max_tokens=6, temperature=0
    )
    assert streamed == plain.choices[0].text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_tokenize_checks_tools_as_chat_does(server):
    """/tokenize with messages takes the tools chat takes (its ids are the prompt chat
    renders with them) and refuses, with the same 400, the ones chat refuses."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    with server.client() as http:
        chat = http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": HELLO, "tools": [tool], "tool_choice": "none",
            "max_tokens": 1, "return_token_ids": True,
        }).json()  # fmt: skip
        tokens = http.post("/tokenize", json={"messages": HELLO, "tools": [tool]}).json()
        assert tokens["tokens"] == chat["prompt_token_ids"]
        for bad, words in (
            ([{"type": "function"}], "needs a name"),
            ([{"type": "retrieval", "function": {"name": "f"}}], "Each tool must be"),
            ([tool, tool], "already used by tools.0"),
        ):
            for path, extra in (("/tokenize", {}), ("/v1/chat/completions", {"model": MODEL})):
                refused = http.post(path, json={"messages": HELLO, "tools": bad, **extra})
                assert refused.status_code == 400 and words in refused.text, (path, refused.text)
        assert http.post("/tokenize", json={"prompt": "still serving"}).status_code == 200


def test_tokenize_detokenize_version_health_docs(server):
    with server.client() as http:
        tokens = http.post("/tokenize", json={"prompt": "Hello world"}).json()
        assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 2048
        chat = http.post("/tokenize", json={"messages": HELLO}).json()
        assert chat["count"] > tokens["count"]
        text = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()
        assert text == {"prompt": "Hello world"}
        assert http.get("/version").json()["version"]
        assert http.get("/health").status_code == 200
        bare = httpx.Client(base_url=server.url)  # /ping is open, as /health: no key
        assert bare.get("/ping").status_code == 200 and bare.post("/ping").status_code == 200
        assert "/v1/chat/completions" in http.get("/openapi.json").json()["paths"]
    # The docs pages and every script they load come from this server (no CDN: they work
    # offline), and need no key, as the pages did.
    for page in ("/docs", "/redoc"):
        html = bare.get(page)
        assert html.status_code == 200 and "://" not in html.text  # no absolute URL
        linked = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert linked and all(url.startswith("/docs/") for url in linked)
        assert all(bare.get(url).status_code == 200 for url in linked)
    assert "swagger" in bare.get("/docs").text.lower()


def test_simple_generate_endpoint(server):
    with server.client() as http:
        reply = http.post(
            "/generate", json={"prompt": "Once upon", "max_tokens": 4, "temperature": 0}
        )
        assert reply.status_code == 200
        text = reply.json()["text"]
        assert (
            len(text) == 1 and text[0].startswith("Once upon") and len(text[0]) > len("Once upon")
        )
        with http.stream(
            "POST",
            "/generate",
            json={"prompt": "Once upon", "max_tokens": 4, "stream": True, "temperature": 0},
        ) as streamed:
            parts = [json.loads(p) for p in streamed.read().decode().split("\0") if p]
        assert parts[-1]["text"] == text
        newer = http.post("/generate", json={"prompt": "x", "max_tokens": 1, "not_a_param": 1})
        assert newer.status_code == 200  # unknown fields: ignored and logged once
        assert "'not_a_param' of GenerateRequest is not known" in server.logs()


def test_metrics_names(server, openai_client):
    openai_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "pagedllm:num_requests_running", "pagedllm:num_requests_waiting",
        "pagedllm:kv_cache_usage_perc", "pagedllm:prompt_tokens_total",
        "pagedllm:generation_tokens_total", "pagedllm:time_to_first_token_seconds_bucket",
        "pagedllm:inter_token_latency_seconds_bucket",
        "pagedllm:e2e_request_latency_seconds_bucket",
        "pagedllm:num_preemptions_total", "pagedllm:request_success_total",
        "pagedllm:prefix_cache_queries_total", "pagedllm:prefix_cache_hits_total",
    ):  # fmt: skip
        assert name in text, name
    assert 'finished_reason="stop"' in text or 'finished_reason="length"' in text


def test_logs_show_requests_and_stats(server, openai_client):
    """This server runs with --enable-log-requests --enable-log-outputs --max-log-len 60:
    prompts and outputs are logged, cut to 60 characters (the chat template's start)."""
    secret = "a secret the log must not show " * 3
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": secret}], max_tokens=3
    )
    logs = server.logs()
    assert "Application startup complete." in logs
    assert "Maximum concurrency for 2048 tokens per request" in logs
    received = [line for line in logs.splitlines() if f"Received request {reply.id}" in line]
    assert len(received) == 1 and "secret" not in received[0]
    generated = [line for line in logs.splitlines() if f"Generated response {reply.id}" in line]
    assert len(generated) == 1 and "finish_reason: length" in generated[0]
    assert "Avg prompt throughput" in logs and "Prefix cache hit rate" in logs


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_api_key_required(server, key):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    reply = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers=headers,
    )
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert error["code"] == 401 and error["type"] == "AuthenticationError" and error["message"]
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert (
        httpx.get(
            f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
        ).status_code
        == 200
    )


def test_prefix_cache_over_http(server, openai_client):
    long_system = "You are a meticulous assistant. " * 40
    messages = [{"role": "system", "content": long_system}, {"role": "user", "content": "Hi"}]

    def ask(**extra):
        return openai_client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=2, extra_body=extra or None
        )

    ask()
    assert ask().usage.prompt_tokens_details.cached_tokens >= 160
    assert ask(cache_salt="tenant-x").usage.prompt_tokens_details.cached_tokens == 0
    assert ask(cache_salt="tenant-x").usage.prompt_tokens_details.cached_tokens >= 160
    # OpenAI's prompt_cache_key is the salt when none is given
    assert ask(prompt_cache_key="user-7").usage.prompt_tokens_details.cached_tokens == 0
    assert ask(prompt_cache_key="user-7").usage.prompt_tokens_details.cached_tokens >= 160
    both = ask(prompt_cache_key="user-8", cache_salt="tenant-x")
    assert both.usage.prompt_tokens_details.cached_tokens >= 160  # cache_salt wins
    text = httpx.get(f"{server.url}/metrics").text
    hits = [
        line for line in text.splitlines() if line.startswith("pagedllm:prefix_cache_hits_total")
    ]
    assert hits and float(hits[0].split()[-1]) >= 320
    # Resetting everyone's cache is a development route (tests/server/test_dev_routes.py).
    assert httpx.post(f"{server.url}/reset_prefix_cache").status_code == 401
    with server.client() as http:
        assert http.post("/reset_prefix_cache").status_code == 404
