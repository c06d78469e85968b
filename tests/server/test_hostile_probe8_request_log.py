"""Hostile-input probe 8, the request log: with --enable-log-requests every prompt of a
request was logged with its sampling parameters written out whole, --max-log-len or not. A
request's allowed_token_ids, logit_bias, stop strings, bad words and grammar made a line of
megabytes, once per prompt of a batched completion: a 1.9 MB body of 64 prompts wrote 122 MB
of log. Each parameter's value is now cut to --max-log-len characters (1024 without it)."""

from __future__ import annotations

import logging
import re
import time

from pagedllm.engine.llm_engine import PreparedRequest
from pagedllm.engine.request_logger import MAX_PARAM_CHARS, RequestLogger
from pagedllm.inputs.processor import ProcessedPrompt
from pagedllm.sampling_params import SamplingParams
from tests.server.conftest import MODEL
from tests.server.test_errors import post

VOCAB = 49152  # the bundled model's


def big_params() -> SamplingParams:
    return SamplingParams(
        allowed_token_ids=list(range(VOCAB)),
        logit_bias={i: 1.0 for i in range(0, VOCAB, 2)},
        stop=["\u200b" * 2048] * 128,
        bad_words=["zq" + "y" * 2000] * 128,
        structured_outputs={"json": {"enum": ["x" * 100] * 1000}},
    )


def received_line(logger: RequestLogger, caplog) -> str:
    prompt = ProcessedPrompt(prompt="hi", prompt_token_ids=[1, 2])
    with caplog.at_level(logging.INFO):
        logger.received(PreparedRequest("req-1", prompt, big_params(), 0.0, 0))
    (line,) = [r.getMessage() for r in caplog.records if r.name.endswith("request_logger")]
    return line


def test_each_parameter_is_cut_to_max_log_len(caplog):
    line = received_line(RequestLogger(max_log_len=60), caplog)
    assert len(line) < 3000, len(line)  # was 2.1 MB
    assert "allowed_token_ids=[0, 1, 2, 3, 4, 5, 6" in line
    assert f"...(cut: {VOCAB} items)" in line
    assert "stop=[" in line and "...(cut: 128 items)" in line
    assert "temperature=1.0" in line and "max_tokens=16" in line  # small values stay whole


def test_parameters_are_bounded_without_max_log_len(caplog):
    line = received_line(RequestLogger(), caplog)
    assert len(line) < 10 * MAX_PARAM_CHARS, len(line)


def test_small_parameters_are_written_as_their_repr(caplog):
    params = SamplingParams(stop=["\n\nUser:"], allowed_token_ids=[1, 2], seed=3)
    prompt = ProcessedPrompt(prompt="hi", prompt_token_ids=[1, 2])
    with caplog.at_level(logging.INFO):
        RequestLogger(max_log_len=60).received(PreparedRequest("r", prompt, params, 0.0, 0))
    (line,) = [r.getMessage() for r in caplog.records if r.name.endswith("request_logger")]
    assert f"params: {params!r}," in line  # repr: the newlines escaped, nothing cut


def test_a_batched_completion_with_large_parameters_logs_little(server):
    """The shared server logs requests with --max-log-len 60."""
    body = {
        "model": MODEL,
        "max_tokens": 1,
        "prompt": ["hi"] * 8,
        "allowed_token_ids": list(range(VOCAB)),
        "stop": ["\u200b" * 2048] * 128,
        "request_id": "probe8-biglog",
    }
    start = time.monotonic()
    reply = post(server, "/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - start < 60
    lines = [
        line
        for line in server.logs().splitlines()
        if re.search(r"Received request probe8-biglog-\S+", line)
    ]
    assert len(lines) == 8
    assert max(len(line) for line in lines) < 4000, max(len(line) for line in lines)
    with server.client() as http:
        begin = time.monotonic()
        assert http.get("/health").status_code == 200
        assert time.monotonic() - begin < 2


def test_a_beam_search_is_logged_once(server):
    """Each step of a beam search ran its beams as one-token requests, and each was logged
    with the whole sequence so far: beams x tokens lines (without --max-log-len, 1.7 MB of
    log from a 4.6 KB request of 8 beams and 40 tokens). The search is logged as one."""
    body = {
        "model": MODEL,
        "prompt": [5] * 50,
        "max_tokens": 8,
        "n": 3,
        "use_beam_search": True,
        "ignore_eos": True,
        "request_id": "probe8-beam",
    }
    reply = post(server, "/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["choices"]) == 3
    lines = [line for line in server.logs().splitlines() if "probe8-beam" in line]
    received = [line for line in lines if "Received" in line]
    assert len(received) == 1, received[:3]
    assert "Received beam search request probe8-beam-" in received[0]
    assert "beam_width=3" in received[0] and "max_tokens=8" in received[0]
    assert "prompt_token_ids: [5, 5, 5" in received[0]
    assert sum("Finished request probe8-beam-" in line for line in lines) == 1
    assert not any("-beam0-" in line for line in lines)
