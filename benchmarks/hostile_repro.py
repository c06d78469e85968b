"""The fifth and sixth probes' reproducers against a running server, each beside an
innocent client.

    pagedllm serve --port 8000 &
    python benchmarks/hostile_repro.py --url http://localhost:8000 chain-grammar
    python benchmarks/hostile_repro.py --url http://localhost:8000 hung-up-prompts
    python benchmarks/hostile_repro.py --url http://localhost:8000 costly-rows
    python benchmarks/hostile_repro.py --url http://localhost:8000 abandoned-fills
    python benchmarks/hostile_repro.py --url http://localhost:8000 huge-chat
    python benchmarks/hostile_repro.py --url http://localhost:8000 long-prompt

chain-grammar: one chat request held to an EBNF chain of 3,000 alternatives that all match
the same text (``r_i ::= r_{i+1} | r_{i+1} "x"``), whose token masks grow to ~26 s each.
hung-up-prompts: one /v1/completions of 128 prompts of 1,000 random token ids whose client
hangs up 3 s after sending it (``--clients N``: N such, at once). Both print the innocent
client's latencies (a 5-token chat request every 0.5 s, from before the attack to 5 s after
it ends; 30 s for the second, since adds the engine holds unread are not in /metrics) and,
for the second, how long /metrics showed a request running or waiting.
costly-rows: 8 chat requests at once, each n=4 and held to its own 600-link chain (masks of
~0.1-0.4 s each, under the row deadline): the steps that wait for all 32 rows.
abandoned-fills: 30 chat requests one after another, each held to its own 3,000-link
chain (each mask abandoned, its fill left running), then the innocent's latencies for 60 s.
huge-chat: 5 chat requests one after another, each one user message of 60 MB (under the
64 MiB body bound): how long each took to be refused.
long-prompt: one chat request of ~8,000 prompt tokens (the bundled model's context is 8,192):
how long it and the innocent's requests took.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time
from urllib.parse import urlparse

import httpx

N_LINKS = 3000
CASES = ["chain-grammar", "hung-up-prompts", "costly-rows", "abandoned-fills", "huge-chat",
         "long-prompt"]  # fmt: skip


def chain_grammar(links: int = N_LINKS, end: str = "y") -> str:
    """A chain of alternatives that all match the same text; ``end`` (its last terminal)
    makes each one a distinct constraint."""
    chain = "\n".join(f'r{i} ::= r{i + 1} | r{i + 1} "x"' for i in range(links))
    return f'root ::= r0\n{chain}\nr{links} ::= "{end}"'


class Innocent:
    """A 5-token chat request every 0.5 s on its own thread; latencies in seconds."""

    def __init__(self, http: httpx.Client, model: str) -> None:
        self.http, self.model = http, model
        self.latencies: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Innocent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 5}  # fmt: skip
        while not self._done.is_set():
            began = time.monotonic()
            self.http.post("/v1/chat/completions", json=body).raise_for_status()
            self.latencies.append(time.monotonic() - began)
            self._done.wait(0.5)


def busy(http: httpx.Client) -> bool:
    metrics = http.get("/metrics").text
    lines = [line for line in metrics.splitlines() if line.startswith(
        ("pagedllm:num_requests_running", "pagedllm:num_requests_waiting{"))]  # fmt: skip
    return any(float(line.rsplit(" ", 1)[1]) > 0 for line in lines)


def one_chat_beside_the_innocent(http: httpx.Client, model: str, body: dict, after: float) -> None:
    """``body`` sent once, 2 s into the innocent's run, which goes on ``after`` s past it."""
    with Innocent(http, model) as innocent:
        time.sleep(2)
        began = time.monotonic()
        reply = http.post("/v1/chat/completions", json=body)
        print(f"attack: {reply.status_code} after {time.monotonic() - began:.1f} s")
        time.sleep(after)
    print(f"innocent: {summary(innocent.latencies)}")


def run_chain_grammar(http: httpx.Client, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
            "guided_grammar": chain_grammar()}  # fmt: skip
    one_chat_beside_the_innocent(http, model, body, after=5)


def run_hung_up_prompts(http: httpx.Client, model: str, url: str, clients: int) -> None:
    where = urlparse(url)
    socks = []
    with Innocent(http, model) as innocent:
        time.sleep(2)
        began = time.monotonic()
        for _ in range(clients):  # each its own prompts (no prefix-cache hits between them)
            prompts = [[random.randint(1000, 40000) for _ in range(1000)] for _ in range(128)]
            body = json.dumps({"model": model, "prompt": prompts, "max_tokens": 1}).encode()
            sock = socket.create_connection((where.hostname, where.port))
            head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
            sock.sendall(head.encode() + body)
            socks.append(sock)
        time.sleep(3)
        for sock in socks:
            sock.close()
        while busy(http):
            time.sleep(0.5)
        print(f"engine busy for {time.monotonic() - began:.1f} s after the request was sent")
        time.sleep(30)  # the engine's backlog is not in /metrics: the innocent tells
    print(f"innocent: {summary(innocent.latencies)}")


def chain_request(model: str, links: int, end: str, n: int = 1) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16,
            "n": n, "guided_grammar": chain_grammar(links, end)}  # fmt: skip


def run_costly_rows(http: httpx.Client, model: str) -> None:
    def attack(i: int) -> None:
        began = time.monotonic()
        reply = http.post("/v1/chat/completions", json=chain_request(model, 600, f"y{i}", 4))
        replies.append(f"{reply.status_code} after {time.monotonic() - began:.1f} s")

    replies: list[str] = []
    with Innocent(http, model) as innocent:
        time.sleep(2)
        threads = [threading.Thread(target=attack, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(3)
    print(f"attack: {', '.join(sorted(replies))}")
    print(f"innocent: {summary(innocent.latencies)}")


def run_abandoned_fills(http: httpx.Client, model: str) -> None:
    statuses: dict[int, int] = {}
    began = time.monotonic()
    for i in range(30):
        status = http.post("/v1/chat/completions", json=chain_request(model, N_LINKS, f"z{i}"))
        statuses[status.status_code] = statuses.get(status.status_code, 0) + 1
    print(f"attack: statuses {statuses} in {time.monotonic() - began:.1f} s")
    with Innocent(http, model) as innocent:
        time.sleep(60)
    print(f"innocent, the 60 s after: {summary(innocent.latencies)}")


def run_huge_chat(http: httpx.Client, model: str) -> None:
    body = json.dumps({"model": model, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "x " * 30_000_000}]})  # fmt: skip
    took = []
    with Innocent(http, model) as innocent:
        time.sleep(2)
        for _ in range(5):
            began = time.monotonic()
            reply = http.post("/v1/chat/completions", content=body,
                              headers={"Content-Type": "application/json"})  # fmt: skip
            took.append(f"{reply.status_code} after {time.monotonic() - began:.2f} s")
        time.sleep(2)
    print(f"attack: {', '.join(took)}")
    print(f"innocent: {summary(innocent.latencies)}")


def run_long_prompt(http: httpx.Client, model: str) -> None:
    body = {"model": model, "max_tokens": 5,
            "messages": [{"role": "user", "content": "hello " * 8000}]}  # fmt: skip
    one_chat_beside_the_innocent(http, model, body, after=3)


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return (f"{len(ordered)} requests, median {ordered[len(ordered) // 2]:.2f} s, "
            f"worst {ordered[-1]:.2f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "case",
        choices=CASES,
    )
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--clients", type=int, default=1, help="hung-up-prompts: at once")
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=900) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        if args.case == "chain-grammar":
            run_chain_grammar(http, model)
        elif args.case == "costly-rows":
            run_costly_rows(http, model)
        elif args.case == "abandoned-fills":
            run_abandoned_fills(http, model)
        elif args.case == "huge-chat":
            run_huge_chat(http, model)
        elif args.case == "long-prompt":
            run_long_prompt(http, model)
        else:
            run_hung_up_prompts(http, model, args.url, args.clients)


if __name__ == "__main__":
    main()
