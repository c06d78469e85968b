"""One streamed request to an OpenAI-compatible server, and its timings: when the first text
came (TTFT), the gaps between later pieces of text (ITL), and the end (E2E latency)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from pagedllm.bench.datasets import SampleRequest

# vLLM's client waits up to six hours for a response: long generations under heavy load
# must finish, not be cut off and counted as failures.
READ_TIMEOUT_S = 6 * 60 * 60
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Endpoint:
    """Where and how every request of a run is sent."""

    url: str  # the full URL: base URL + endpoint path
    model: str  # the name sent in each request
    chat: bool  # /v1/chat/completions (messages, deltas) rather than /v1/completions
    headers: dict[str, str] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, top_k
    ignore_eos: bool = False


@dataclass
class RequestResult:
    prompt_len: int
    start: float  # time.perf_counter() when the request was sent
    success: bool = False
    output_tokens: int = 0
    ttft: float = 0.0  # seconds from sending to the first piece of text
    itl: list[float] = field(default_factory=list)  # seconds between later pieces of text
    latency: float = 0.0  # seconds from sending to the end of the stream
    generated_text: str = ""
    error: str = ""


def make_client(max_connections: int | None) -> httpx.AsyncClient:
    """One client for the whole run; ``None`` connections means no cap (as vLLM's, when no
    --max-concurrency is given: every request of an ``inf`` rate is sent at once)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=None)
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    return httpx.AsyncClient(limits=limits, timeout=timeout)


async def first_model(client: httpx.AsyncClient, models_url: str, headers: dict[str, str]) -> str:
    """The first model id the server lists: the name requests use when --model is not given."""
    try:
        response = await client.get(models_url, headers=headers, timeout=CONNECT_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach the server at {models_url}: {describe(exc)}") from exc
    if response.status_code != 200:
        message = error_message(response.content)
        raise ValueError(f"GET {models_url} answered {response.status_code}: {message}")
    try:
        return str(response.json()["data"][0]["id"])
    except (ValueError, LookupError, TypeError) as exc:  # not JSON, or no model in it
        raise ValueError(f"GET {models_url} lists no model ({exc!r}); pass --model") from exc


def request_body(endpoint: Endpoint, sample: SampleRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": endpoint.model, **endpoint.sampling}
    if endpoint.chat:
        body["messages"] = [{"role": "user", "content": sample.prompt}]
        body["max_completion_tokens"] = sample.output_len
    else:
        body["prompt"] = sample.prompt
        body["max_tokens"] = sample.output_len
    if endpoint.ignore_eos:
        body["ignore_eos"] = True  # an extra field that vLLM and pagedllm servers accept
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


async def send(
    client: httpx.AsyncClient, endpoint: Endpoint, sample: SampleRequest
) -> RequestResult:
    """Send one streamed request; failures are recorded in the result, never raised."""
    result = RequestResult(prompt_len=sample.prompt_len, start=time.perf_counter())
    try:
        await _stream_into(result, client, endpoint, request_body(endpoint, sample))
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = describe(exc)
    result.latency = time.perf_counter() - result.start
    result.success = not result.error
    return result


async def _stream_into(
    result: RequestResult, client: httpx.AsyncClient, endpoint: Endpoint, body: dict[str, Any]
) -> None:
    async with client.stream("POST", endpoint.url, json=body, headers=endpoint.headers) as answer:
        if answer.status_code != 200:
            message = error_message(await answer.aread())
            result.error = f"HTTP {answer.status_code}: {message}"
            return
        pieces: list[str] = []
        last = result.start
        async for line in answer.aiter_lines():
            now = time.perf_counter()  # before parsing: the arrival, not the JSON work
            data = sse_data(line)
            if data is None:
                continue
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                result.error = f"a streamed chunk is not a JSON object: {data[:100]}"
                return
            result.error = chunk_error(chunk)
            if result.error:
                return
            text = chunk_text(chunk, endpoint.chat)
            if text:
                if pieces:
                    result.itl.append(now - last)
                else:
                    result.ttft = now - result.start
                pieces.append(text)
                last = now
            completion_tokens = (chunk.get("usage") or {}).get("completion_tokens")
            if completion_tokens is not None:
                result.output_tokens = int(completion_tokens)
        if not pieces:  # no text at all (e.g. only special tokens): the first token is the end
            result.ttft = time.perf_counter() - result.start
        if not result.output_tokens:  # a server that sends no usage: one token per piece
            result.output_tokens = len(pieces)
        result.generated_text = "".join(pieces)


def sse_data(line: str) -> str | None:
    """The payload of a server-sent event's ``data:`` line; None for any other line."""
    if not line.startswith("data:"):
        return None
    return line[len("data:") :].strip()


def chunk_text(chunk: dict[str, Any], chat: bool) -> str:
    """The text a streamed chunk carries for the first choice ('' for usage-only chunks)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if not chat:
        return choices[0].get("text") or ""
    delta = choices[0].get("delta") or {}
    # Reasoning models stream their thinking in a field of its own; it is output all the same.
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    return reasoning + (delta.get("content") or "")


def chunk_error(chunk: dict[str, Any]) -> str:
    """The message of an error sent inside the stream; '' when the chunk is not an error."""
    error = chunk.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error:
        return str(error)
    if chunk.get("object") == "error":  # vLLM's older error body
        return str(chunk.get("message") or chunk)
    return ""


def error_message(body: bytes) -> str:
    """The message of an error response's JSON body, or the start of its text."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    return text[:300]


def describe(exc: BaseException) -> str:
    """An exception as one line; httpx's connection errors often have an empty message."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
