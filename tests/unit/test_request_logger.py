"""Request logging: what a line shows, cut to max_log_len, and outputs added up from
deltas or taken whole."""

from __future__ import annotations

import logging

import pytest

from pagedllm.engine.llm_engine import PreparedRequest
from pagedllm.engine.request_logger import RequestLogger
from pagedllm.inputs.processor import ProcessedPrompt
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


def prepared(kind: RequestOutputKind) -> PreparedRequest:
    prompt = ProcessedPrompt(prompt="line one\nline two " * 4, prompt_token_ids=list(range(50)))
    return PreparedRequest("req-1", prompt, SamplingParams(output_kind=kind), 0.0, 0)


def step(text: str, ids: list[int], finish: str | None = None) -> RequestOutput:
    done = CompletionOutput(0, text, ids, None, None, finish_reason=finish)
    return RequestOutput("req-1", None, [], None, [done], finished=finish is not None)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.endswith("request_logger")]


@pytest.mark.parametrize("kind", [RequestOutputKind.DELTA, RequestOutputKind.CUMULATIVE])
def test_prompts_and_outputs_are_cut_and_escaped(caplog, kind):
    logger = RequestLogger(log_outputs=True, max_log_len=12)
    request = prepared(kind)
    outputs = logger.outputs(request)
    cumulative = kind == RequestOutputKind.CUMULATIVE
    with caplog.at_level(logging.INFO):
        logger.received(request)
        outputs.add(step("Hello", [1, 2]))
        outputs.add(
            step(
                "Hello, world!" if cumulative else ", world!",
                [1, 2, 3] if cumulative else [3],
                "stop",
            )
        )
        logger.ended("req-1", True, outputs)
    received, generated, finished = messages(caplog)
    assert "prompt: 'line one\\nlin'" in received  # repr: no raw newline, 12 characters
    assert "prompt_token_ids: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]." in received
    assert "output: 'Hello, world'" in generated and "output_token_ids: [1, 2, 3]" in generated
    assert "finish_reason: stop" in generated and finished == "Finished request req-1."


def test_outputs_are_not_collected_unless_asked(caplog):
    logger = RequestLogger()
    assert logger.outputs(prepared(RequestOutputKind.DELTA)) is None
    with caplog.at_level(logging.INFO):
        logger.ended("req-1", False, None)
    assert messages(caplog) == ["Aborted request req-1."]


def test_a_negative_max_log_len_is_refused():
    with pytest.raises(ValueError, match="max_log_len"):
        RequestLogger(max_log_len=-1)
