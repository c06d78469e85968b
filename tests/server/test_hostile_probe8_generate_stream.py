"""Hostile-input probe 8, vLLM's demo ``/generate`` streamed: each object holds a sample's
prompt and whole completion so far, so the reply grew with n x prompt x tokens (and the square
of the completion). A 64 KB prompt of n=8 and 100 tokens streamed 51 MB, of n=32 205 MB; the
120 KB prompt of n=4 and 60 tokens here, 29 MB. Past 16 MiB a sample's object is now sent only
once twice the size of its last one sent, or when it ends the sample: nothing is lost, since
each holds all of its sample before it."""

from __future__ import annotations

import json
import threading
import time

from pagedllm.entrypoints.openai.serving_generate import STREAM_BYTES_FLOOR, _CumulativeSender

PROMPT = "=" * 121_600  # 1,900 tokens of the bundled model's
BODY = {"prompt": PROMPT, "n": 4, "max_tokens": 60, "ignore_eos": True, "temperature": 0}


def test_a_streamed_generate_of_a_long_prompt_is_bounded(server):
    slowest: list[float] = []
    done = threading.Event()

    def probe_health() -> None:
        with server.client() as http:
            while not done.is_set():
                start = time.monotonic()
                assert http.get("/health").status_code == 200
                slowest.append(time.monotonic() - start)
                time.sleep(0.2)

    prober = threading.Thread(target=probe_health)
    prober.start()
    try:
        with server.client() as http:
            with http.stream("POST", "/generate", json={**BODY, "stream": True}) as reply:
                assert reply.status_code == 200
                raw = reply.read()
            whole = http.post("/generate", json=BODY)
    finally:
        done.set()
        prober.join()
    assert len(raw) < STREAM_BYTES_FLOOR + 2_000_000, len(raw)  # was 29 MB
    assert whole.status_code == 200, whole.text[:300]
    (expected,) = set(whole.json()["text"])  # greedy: the 4 samples are the same
    assert len(expected) > len(PROMPT)
    texts = [t for part in raw.decode().split("\0") if part for t in json.loads(part)["text"]]
    assert sum(t == expected for t in texts) == 4  # every sample's end was sent
    assert all(expected.startswith(t) for t in texts)  # the others, earlier states
    assert max(slowest) < 2


def test_a_short_stream_sends_every_object():
    sender = _CumulativeSender()
    sizes = [100 + 4 * i for i in range(2000)]  # one sample, 2,000 tokens: 8.2 MB in all
    sent = []
    for i, size in enumerate(sizes):
        if sender.sends({0: size}, i == len(sizes) - 1):
            sender.sent += size
            sent.append(size)
    assert sent == sizes


def test_past_the_floor_only_doubled_and_ending_objects_are_sent():
    sender = _CumulativeSender()
    sender.sent = STREAM_BYTES_FLOOR
    sender.last = {0: 1000, 1: 1000}
    assert not sender.sends({0: 1500}, False)
    assert sender.sends({0: 2000}, False)
    assert not sender.sends({0: 3999}, False)
    assert not sender.sends({1: 1999}, False)
    assert sender.sends({1: 1100}, True)  # it ends sample 1
    assert sender.sends({2: 1000}, False)  # a sample's first object
