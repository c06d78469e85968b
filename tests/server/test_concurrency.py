"""Many clients at once, and clients that hang up."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import httpx

from tests.server.conftest import API_KEY, MODEL


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^pagedllm:{name}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def wait_idle(server, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (
            metric(server, "num_requests_running") == 0
            and metric(server, "kv_cache_usage_perc") == 0
        ):
            return
        time.sleep(0.2)
    raise AssertionError(
        "KV cache not released: " + httpx.get(f"{server.url}/metrics").text[-2000:]
    )


def test_disconnect_mid_stream_frees_the_blocks(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 1500, "stream": True, "extra": None}  # fmt: skip
    del body["extra"]
    with (
        server.client() as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert metric(server, "num_requests_running") == 1
        assert metric(server, "kv_cache_usage_perc") > 0
    wait_idle(server)  # the hang-up aborted the request
    aborted = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'request_success_total\{[^}]*finished_reason="abort"[^}]*\} [1-9]', aborted)


def test_disconnect_of_a_non_streaming_request(server):
    body = {
        "model": MODEL,
        "prompt": "Write a long list of numbers:",
        "max_tokens": 1500,
        "ignore_eos": True,
    }
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(
            f"{server.url}/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=2,
        )
    wait_idle(server)


async def one_stream(client, i: int) -> tuple[str, str | None]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Give me fact number {i} about the sea."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    text, finish = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_32_concurrent_streams(server, openai_client):
    from openai import AsyncOpenAI

    async def run() -> list[tuple[str, str | None]]:
        client = AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*(one_stream(client, i) for i in range(32)))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert all(text and finish in ("stop", "length") for text, finish in results)
    for i in (0, 17, 31):  # the same greedy answers as alone, non-streamed
        alone = openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Give me fact number {i} about the sea."}],
            max_tokens=24,
            temperature=0,
        )
        assert results[i][0] == alone.choices[0].message.content
    wait_idle(server)
