"""16 concurrent /v1/completions of 1,000 random token ids, 16 tokens out: wall and latencies."""
import random, statistics, sys, time, concurrent.futures as cf
import httpx
url = sys.argv[1]
rng = random.Random(0)
model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
prompts = [[rng.randrange(100, 40000) for _ in range(1000)] for _ in range(16)]
def one(p):
    t = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": p, "max_tokens": 16,
                   "ignore_eos": True, "temperature": 0}, timeout=600)
    assert r.status_code == 200, r.text
    return time.perf_counter() - t
start = time.perf_counter()
with cf.ThreadPoolExecutor(16) as ex:
    lat = sorted(ex.map(one, prompts))
wall = time.perf_counter() - start
print(f"wall {wall:.1f} s, output {16*16/wall:.1f} tok/s, total {16*1016/wall:.0f} tok/s; "
      f"latency median {statistics.median(lat):.1f} s, worst {lat[-1]:.1f} s")
