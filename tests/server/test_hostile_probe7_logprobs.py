"""The seventh probe's reproducer: a non-streamed completion repeats its prompt's logprobs in
every choice, so n multiplied one prompt's (already large) logprobs into a reply built on the
event loop at once. n=32 of a 2,000-token prompt at logprobs=20 made 177 MB and held every
other request 10 s; past a bound a reply of several choices is a 400 before any engine work."""

from __future__ import annotations

import time

from tests.server.conftest import MODEL
from tests.server.test_errors import assert_error, post


def completion(**fields) -> dict:
    return {"model": MODEL, "max_tokens": 1, **fields}


def test_prompt_logprobs_repeated_over_choices_are_bounded(server):
    # 1,800 tokens x n=8 x (21 echoed + 21 prompt_logprobs) = 604,800 entries
    body = completion(prompt=[5] * 1800, n=8, echo=True, logprobs=20)
    start = time.monotonic()
    assert_error(post(server, "/v1/completions", json=body), 400, "repeat its prompt's logprobs")
    assert time.monotonic() - start < 5  # refused before the prompt is run
    explicit = completion(prompt=[5] * 1800, n=16, prompt_logprobs=20)
    assert_error(post(server, "/v1/completions", json=explicit), 400, "x n=16 x 21 per token")
    several = completion(prompt=[[5] * 1800] * 8, echo=True, logprobs=20)
    assert_error(post(server, "/v1/completions", json=several), 400, "in each of its 8 choices")


def test_small_repeated_prompt_logprobs_are_served(server):
    body = completion(prompt="1 2 3 4", n=2, echo=True, logprobs=2, seed=1)
    reply = post(server, "/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    choices = reply.json()["choices"]
    assert len(choices) == 2
    for choice in choices:
        assert choice["text"].startswith("1 2 3 4")
        assert len(choice["logprobs"]["tokens"]) == len(choice["prompt_logprobs"]) + 1
