"""The server's bounds on clients, on a tiny model with small limits (the ``limited``
fixture): body size (413), slow headers and bodies, trusted request templates that
misbehave, the waiting queue (503 with Retry-After), and n / best_of past --max-n."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import httpx
import pytest

from pagedllm.entrypoints.openai.http_protocol import MAX_HEADER_BYTES
from tests.server.conftest import API_KEY
from tests.server.test_errors import assert_error

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]


def post(server, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers=headers or HEADERS, timeout=60, **kwargs)


def test_bodies_past_the_limit_are_413_before_or_while_read(limited):
    big = {"prompt": "a" * 200_000}
    assert_error(post(limited, "/v1/completions", json=big), 413, "--max-request-body-bytes")

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"a" * 10_000
        yield b'"}'

    reply = post(limited, "/v1/completions", content=chunks(),
                 headers={**HEADERS, "Content-Type": "application/json"})  # fmt: skip
    assert_error(reply, 413, "100000")


def test_compressed_bodies_are_415_and_a_trailing_slash_redirects_nowhere(limited):
    """A gzip body was read as if plain; "/v1/completions/" answered a 307 to whatever host
    the request's Host header named. Both refused now, and the server serves on."""
    body = {"prompt": "hi", "max_tokens": 1}
    for encoding in ("gzip", "br, gzip"):
        reply = post(limited, "/v1/completions", json=body,
                     headers={**HEADERS, "Content-Encoding": encoding})  # fmt: skip
        assert_error(reply, 415, "Content-Encoding", "uncompressed")
    reply = post(limited, "/v1/completions/", json=body,
                 headers={**HEADERS, "Host": "evil.example.com"})  # fmt: skip
    assert reply.status_code == 404 and "location" not in reply.headers
    ok = post(limited, "/v1/completions", json=body,
              headers={**HEADERS, "Content-Encoding": "identity"})  # fmt: skip
    assert ok.status_code == 200, ok.text


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(100) == b""
    except TimeoutError:
        return False


def test_slow_or_absent_headers_lose_the_connection(limited):
    host, port = limited.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as idle:
        start = time.monotonic()
        assert _closed_within(idle, 10)
        assert time.monotonic() - start < 5
    with socket.create_connection((host, int(port))) as partial:
        partial.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        assert _closed_within(partial, 10)


def test_oversized_headers_are_431_and_close(limited):
    """httptools buffers an unfinished head whole: 128 MiB of one header took 115 MB of
    the server, with no key needed; past 64 KiB the connection ends."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Junk: "
    # Just past the bound, all at once: the server reads it all before it closes, so its
    # close is a FIN after the 431 (a close with bytes unread would be a reset).
    reply = _reply(limited, head + b"j" * (MAX_HEADER_BYTES + 100 - len(head)))
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    fine = httpx.get(f"{limited.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}",
                     "X-Junk": "j" * 30_000})  # fmt: skip
    assert fine.status_code == 200


def test_a_whole_head_past_the_bound_is_431(limited):
    """A head that arrives complete (in one read, the protocol's count never sees it
    unfinished) is measured too: 128 KB of one header was answered."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * 100_000 + b"\r\n\r\n"
    reply = _reply(limited, head)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]


def _reply(server, data: bytes) -> bytes:
    """What the server sends back to ``data`` on a raw connection, until it closes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(data)
        sock.settimeout(10)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                reply += chunk
    return reply


def test_a_body_that_stops_arriving_is_408(limited):
    host, port = limited.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        sock.settimeout(10)
        reply = b""
        while chunk := sock.recv(4096):  # the server closes the connection after the 408
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within" in reply


def test_a_body_trickled_in_time_for_each_piece_is_408_on_the_whole(limited):
    """A byte every second (each piece well within the 1.5 s) held the connection for as
    long as the client liked; the whole body has 1.5 s plus 1 s per 8 KiB of it."""
    host, port = limited.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        start, sent = time.monotonic(), 1
        sock.settimeout(1.0)
        reply = b""
        while not reply and time.monotonic() - start < 8:
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                sock.sendall(b" ")
                sent += 1
        assert time.monotonic() - start < 4 and sent < 5
        sock.settimeout(10)
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"plus 1 s per 8 KiB for the whole body" in reply


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
         "longer than 2 s"),
        ("{{ 'a' * 10000000000 }}", "memory"),
        ("{{ raise_exception('refused by the template') }}", "refused by the template"),
        # 40 bytes to 48 MB of text, which the server would then tokenize: the render is
        # bounded by what the model's context could hold.
        ("{{ 'hello world ' * 4000000 }}", "more than the model's context could hold"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_trusted_request_templates_are_bounded(limited, template, fragment, path):
    start = time.monotonic()
    body = {"messages": HELLO, "chat_template": template, "max_tokens": 2}
    if path == "/tokenize":
        del body["max_tokens"]
    assert_error(post(limited, path, json=body), 400, fragment)
    assert time.monotonic() - start < 15
    assert httpx.get(f"{limited.url}/health").status_code == 200


def test_a_trusted_template_is_text_not_a_path(limited):
    reply = post(limited, "/tokenize", json={"messages": HELLO, "chat_template": "/etc/passwd"})
    assert reply.status_code == 200
    assert reply.json()["count"] == len("/etc/passwd")  # one token per character


def test_n_past_the_cap(limited):
    body = {"messages": HELLO, "n": 5, "max_tokens": 2}
    assert_error(post(limited, "/v1/chat/completions", json=body), 400, "--max-n", param="n")
    ok = post(limited, "/v1/chat/completions", json={**body, "n": 4})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 4


def test_the_waiting_queue_is_bounded(limited):
    """Two run (--max-num-seqs 2), six may wait: of sixteen at once, some get 503."""

    async def flood() -> list[httpx.Response]:
        body = {"prompt": "go", "max_tokens": 500, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=limited.url, headers=HEADERS, timeout=120) as http:
            return list(
                await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(16)))
            )

    replies = asyncio.run(flood())
    refused = [r for r in replies if r.status_code == 503]
    assert refused and all(r.headers["retry-after"] == "1" for r in refused)
    assert "--max-waiting-requests" in refused[0].json()["error"]["message"]
    assert sum(r.status_code == 200 for r in replies) >= 6  # the bound, at least
    assert (
        post(limited, "/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200
    )


def test_disable_fastapi_docs_removes_the_schema_and_pages(limited):
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/swagger-ui-bundle.js"):
        assert httpx.get(f"{limited.url}{path}").status_code == 404, path


def test_chat_serve_flags(limited):
    """--response-role, --default-chat-template-kwargs (under the request's own) and
    --enable-force-include-usage; the tokenizer is one token per character, so a prompt's
    token count is its rendered length."""
    template = "{{ greeting }}-{{ mood }}:{{ messages[0]['content'] }}"
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
            "chat_template": template, "add_generation_prompt": False}  # fmt: skip
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=limited.url, headers=headers, timeout=60) as http:
        plain = http.post("/v1/chat/completions", json=body).json()
        own = http.post("/v1/chat/completions", json={
            **body, "chat_template_kwargs": {"greeting": "hello"}}).json()  # fmt: skip
        tokenized = http.post("/tokenize", json={k: body[k] for k in (
            "messages", "chat_template", "add_generation_prompt")}).json()  # fmt: skip
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: {")]  # fmt: skip
    assert plain["choices"][0]["message"]["role"] == "bot"
    assert plain["usage"]["prompt_tokens"] == len("hi-calm:x")
    assert own["usage"]["prompt_tokens"] == len("hello-calm:x")
    assert tokenized["count"] == plain["usage"]["prompt_tokens"]  # the same defaults apply
    assert chunks[0]["choices"][0]["delta"]["role"] == "bot"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


def test_lora_flags_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Through the command's main() in this process (a process paid ~3 s of imports), which
    must not reach the socket."""
    from pagedllm.entrypoints.cli.main import main
    from pagedllm.entrypoints.openai import api_server

    def no_bind(host: str | None, port: int) -> None:
        raise AssertionError("the LoRA flags passed the start-up checks")

    monkeypatch.setattr(api_server, "_bind", no_bind)
    monkeypatch.delenv("PAGEDLLM_LOGGING_LEVEL", raising=False)  # main() sets it for its server
    assert main(["serve", "--max_loras", "2", "--lora-modules", "a=/x"]) == 2
    assert "--max-loras, --lora-modules: LoRA adapters are not supported" in capsys.readouterr().err


def test_cached_tokens_only_with_prompt_tokens_details(limited):
    """Off by default, as vLLM: cached_tokens tells any client whether a prompt it guesses
    is in the prefix cache (the other server runs with --enable-prompt-tokens-details)."""
    body = {"messages": HELLO, "max_tokens": 2}
    for _ in range(2):  # the second finds the first's blocks
        usage = post(limited, "/v1/chat/completions", json=body).json()["usage"]
        assert usage.get("prompt_tokens_details") is None, usage
    usage = post(limited, "/v1/completions", json={"prompt": "abc" * 40, "max_tokens": 2}).json()
    assert usage["usage"].get("prompt_tokens_details") is None
