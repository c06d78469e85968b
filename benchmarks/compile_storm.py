"""What many costly grammar compiles at once do to everyone else's requests.

    pagedllm serve --port 8000 &            # the server under test (any model)
    python benchmarks/compile_storm.py --url http://localhost:8000 [--storm 16]

An innocent client sends one short completion at a time (8 tokens, unconstrained) for
``--quiet`` seconds; then ``--storm`` clients each send one request held to its own JSON
schema (distinct, so no compile is shared) at the bounds a schema may reach: 64 costly
string formats and patterns of 1,024 characters. The innocent client goes on throughout.
Prints the innocent latencies (median, p90, worst) before and during the storm, and how long
the storm's requests took.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx


def costly_schema(salt: int) -> dict:
    props: dict[str, dict] = {
        f"mail{salt}_{i}": {"type": "string", "format": "email"} for i in range(64)
    }
    props |= {f"code{salt}_{i}": {"type": "string", "pattern": "[a-z]{1024}"} for i in range(16)}
    return {"type": "object", "properties": props, "required": list(props)}


async def innocent(http: httpx.AsyncClient, model: str, until: float, out: list[float]) -> None:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 8}
    while time.monotonic() < until:
        start = time.monotonic()
        reply = await http.post("/v1/completions", json=body)
        reply.raise_for_status()
        out.append(time.monotonic() - start)


async def storm_request(http: httpx.AsyncClient, model: str, salt: int) -> tuple[int, float]:
    schema = {"name": f"s{salt}", "schema": costly_schema(salt)}
    body = {"model": model, "prompt": "{", "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": schema}}  # fmt: skip
    start = time.monotonic()
    reply = await http.post("/v1/completions", json=body)
    return reply.status_code, time.monotonic() - start


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (f"{len(ordered)} requests, median {statistics.median(ordered) * 1000:.0f} ms, "
            f"p90 {p90 * 1000:.0f} ms, worst {ordered[-1] * 1000:.0f} ms")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        quiet: list[float] = []
        await innocent(http, model, time.monotonic() + args.quiet, quiet)
        during: list[float] = []
        started = time.monotonic()
        storm = asyncio.gather(*(storm_request(http, model, salt) for salt in range(args.storm)))
        watcher = asyncio.ensure_future(innocent(http, model, float("inf"), during))
        results = await storm
        storm_s = time.monotonic() - started
        watcher.cancel()
    statuses = sorted({status for status, _ in results})
    print(f"quiet:  {summary(quiet)}")
    print(f"storm:  {summary(during)}")
    print(f"storm requests: {args.storm}, statuses {statuses}, all done in {storm_s:.1f} s, "
          f"slowest {max(s for _, s in results):.1f} s")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--storm", type=int, default=16, help="costly requests at once")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds before the storm")
    asyncio.run(main(parser.parse_args()))
