"""Soak the server with hostile and ordinary clients; report what it did to the server.

    python benchmarks/soak.py [--requests 2000] [--concurrency 16] [--model MODEL]

Starts ``pagedllm serve`` (the bundled model unless --model), then sends a bounded number
of requests from concurrent clients: valid requests with random parameters on every
endpoint (streamed or not), invalid ones (out-of-range and wrongly typed fields, lone
surrogates, malformed JSON, oversized n, request templates, unknown models), clients that
hang up mid-stream, and clients that stall while sending headers or a body. Prints the
requests sent, the 2xx / 4xx / 5xx counts, the KV blocks still held once the server is idle
(leaked blocks), and the growth of the server's resident memory from after a warm-up to
the end. Targets: 0 5xx, 0 leaked blocks, RSS growth < 5%. Appends the table to
benchmarks/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

KEY = "soak-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def start_server(model: str | None, port: int, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "serve"]
    args += [model] if model else []
    args += ["--port", str(port), "--api-key", KEY, "--max-model-len", "512",
             "--kv-cache-memory-bytes", "64M", "--request-header-timeout", "2",
             "--request-body-timeout", "2", "--disable-uvicorn-access-log"]  # fmt: skip
    process = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start")


def rss_bytes(pid: int) -> int:
    """Resident memory of the server and its children (template workers)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) * 1024 if match else 0
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# -- request makers: each returns (method, path, body bytes or json, expectation) --------

HELLO = [{"role": "user", "content": "Say something short."}]
VALID_FIELDS = {
    "temperature": [0.0, 0.5, 1.0, 1.7],
    "top_p": [0.5, 0.9, 1.0],
    "top_k": [-1, 1, 20, 1000],
    "min_p": [0.0, 0.1],
    "seed": [0, 7, 2**64 - 1],
    "n": [1, 2, 3],
    "presence_penalty": [-1.0, 0.0, 1.5],
    "frequency_penalty": [0.0, 0.7],
    "repetition_penalty": [1.0, 1.2],
    "stop": ["\n", ["the", "."]],
    "logit_bias": [{"42": 5.0}],
    "min_tokens": [0, 2],
}
INVALID_FIELDS = {
    "temperature": [-1, True, "hot", -1e300],
    "top_p": [0, 2.5],
    "n": [0, 10_000, 2**31],
    "best_of": [2**63],
    "seed": [2**70, -5, 1.5],
    "max_tokens": [0, -1, "9"],
    "prompt_logprobs": [-1, 1000],
    "logit_bias": [{"not-a-token": 1}, [1, 2]],
    "stop": [[1], "x" * 5000],
    "chat_template": ["/etc/passwd", "{% for a in range(99999) %}{% endfor %}"],
    "chat_template_kwargs": [{"messages": []}],
    "model": ["gpt-5"],
}


def _fields(rng: random.Random, table: dict, count: int) -> dict:
    names = rng.sample(sorted(table), k=min(count, len(table)))
    return {name: rng.choice(table[name]) for name in names}


def make_request(rng: random.Random) -> tuple[str, str, object]:
    kind = rng.random()
    stream = rng.random() < 0.4
    if kind < 0.35:
        body = {"messages": HELLO, "max_tokens": rng.randint(1, 12), "stream": stream}
        return "json", "/v1/chat/completions", {**body, **_fields(rng, VALID_FIELDS, 3)}
    if kind < 0.55:
        body = {"prompt": "The weather today is", "max_tokens": rng.randint(1, 12),
                "stream": stream}  # fmt: skip
        return "json", "/v1/completions", {**body, **_fields(rng, VALID_FIELDS, 3)}
    if kind < 0.6:
        return "json", "/generate", {"prompt": "Once", "max_tokens": rng.randint(1, 8)}
    if kind < 0.65:
        return "json", "/tokenize", {"messages": HELLO}
    if kind < 0.85:
        path = rng.choice(["/v1/chat/completions", "/v1/completions", "/generate"])
        body: dict = {"max_tokens": 4}
        body.update({"messages": HELLO} if "chat" in path else {"prompt": "hi"})
        return "json", path, {**body, **_fields(rng, INVALID_FIELDS, 1)}
    raw = rng.choice([
        b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
        b'{"prompt": "hi", "temperature": NaN}',
        b'{"prompt": ',
        b"",
        b"[1, 2, 3]",
    ])  # fmt: skip
    return "raw", rng.choice(["/v1/chat/completions", "/v1/completions", "/tokenize"]), raw


async def one_request(http: httpx.AsyncClient, rng: random.Random, counts: Counter,
                      failures: list[str]) -> None:  # fmt: skip
    shape, path, body = make_request(rng)
    hang_up = rng.random() < 0.1
    kwargs: dict = {"json": body} if shape == "json" else {
        "content": body, "headers": {"Content-Type": "application/json"}
    }  # fmt: skip
    try:
        async with http.stream("POST", path, **kwargs) as response:
            if hang_up:
                async for _ in response.aiter_bytes():
                    break
                counts["hung up"] += 1
                return
            data = await response.aread()
    except httpx.HTTPError as exc:
        counts["client error"] += 1
        failures.append(f"{path}: {type(exc).__name__}")
        return
    status = response.status_code
    counts[f"{status // 100}xx"] += 1
    if status >= 500:
        failures.append(f"{path} {json.dumps(body)[:200] if shape == 'json' else body!r}: "
                        f"{status} {data[:300]!r}")  # fmt: skip


async def stall(port: int, rng: random.Random, counts: Counter) -> None:
    """A client that sends part of its headers or body and then waits."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if rng.random() < 0.5:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    else:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n{")  # fmt: skip
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(1000), timeout=15)
        counts["stalled, cut off by the server"] += 1
    except asyncio.TimeoutError:
        counts["stalled, still open after 15 s"] += 1
    writer.close()


async def soak(port: int, requests: int, concurrency: int, seed: int, pid: int) -> dict:
    rng = random.Random(seed)
    counts: Counter = Counter()
    failures: list[str] = []
    sent = 0
    rss_after_warmup = 0
    warmup = min(200, requests // 5)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=HEADERS,
                                 timeout=120, limits=limits) as http:  # fmt: skip

        async def worker() -> None:
            nonlocal sent, rss_after_warmup
            while sent < requests:
                sent += 1
                if sent == warmup:
                    rss_after_warmup = rss_bytes(pid)
                if rng.random() < 0.01:
                    await stall(port, rng, counts)
                else:
                    await one_request(http, rng, counts, failures)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"counts": counts, "failures": failures, "sent": sent, "rss_warm": rss_after_warmup}


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^pagedllm:{name}\{{.*\}} (\S+)$", text, re.M)[1])


def idle_kv(port: int, num_blocks: int) -> tuple[int, int]:
    """(running requests, KV blocks held) once the server is idle (60 s at most)."""
    deadline = time.time() + 60
    running = used = 0
    while time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        running = int(_metric(text, "num_requests_running"))
        used = round(_metric(text, "kv_cache_usage_perc") * num_blocks)
        if running == 0 and used == 0:
            break
        time.sleep(0.5)
    return running, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-server-{port}.log"
    server = start_server(args.model, port, log)
    try:
        start = time.time()
        result = asyncio.run(soak(port, args.requests, args.concurrency, args.seed, server.pid))
        elapsed = time.time() - start
        num_blocks = int(re.search(r"KV cache: (\d+) blocks", log.read_text())[1])
        running, leaked = idle_kv(port, num_blocks)
        rss_end = rss_bytes(server.pid)
        alive = httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
    counts = result["counts"]
    growth = (rss_end - result["rss_warm"]) / result["rss_warm"] * 100
    tracebacks = log.read_text().count("Traceback")
    table = [
        "| requests | 2xx | 4xx | 5xx | hung up | stalled (cut off / open) | leaked blocks "
        "| running when idle | RSS after warm-up → end | growth | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['sent']} | {counts['2xx']} | {counts['4xx']} | {counts['5xx']} "
        f"| {counts['hung up']} | {counts['stalled, cut off by the server']} / "
        f"{counts['stalled, still open after 15 s']} | {leaked} | {running} "
        f"| {result['rss_warm'] / 2**20:.0f} → {rss_end / 2**20:.0f} MiB | {growth:+.1f}% "
        f"| {elapsed:.0f} |",
        "",
        f"Server healthy afterwards: {alive}; tracebacks in its log: {tracebacks}; "
        f"client-side errors: {counts['client error']}.",
    ]
    print("\n".join(table))
    for failure in result["failures"][:20]:
        print("  ", failure)
    if not args.no_record:
        sys.path.insert(0, str(Path(__file__).parent))
        from record import append_record, device_name

        workload = (
            f"{result['sent']} requests from {args.concurrency} concurrent clients (seed "
            f"{args.seed}): valid and invalid parameters on every endpoint, streamed and not, "
            "10% hang up mid-response, 1% stall in headers or body; the server with "
            "--request-header-timeout 2 --request-body-timeout 2"
        )
        append_record("Server soak", device_name(), workload, table)
    ok = counts["5xx"] == 0 and leaked == 0 and growth < 5 and alive
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
