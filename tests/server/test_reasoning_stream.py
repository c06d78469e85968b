"""The reasoning parser inside the chat endpoint, driven by scripted token streams (SmolLM2
does not think): deltas split into reasoning (under vLLM 0.26's name ``reasoning`` and the
older ``reasoning_content``) and content, streamed and not; include_reasoning=False drops it."""

from __future__ import annotations

import asyncio
import json
from typing import ClassVar

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest
from pagedllm.entrypoints.openai.reasoning import get_reasoning_parser
from pagedllm.entrypoints.openai.serving_chat import ChatHandler
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.outputs import CompletionOutput, RequestOutput


class ScriptedRenderer:
    """The chat renderer's part: the messages' text, then an opened think block."""

    rendered_kwargs: ClassVar[list] = []  # the chat_template_kwargs of each render

    async def render(self, messages, *args, keep_tail=False):
        self.rendered_kwargs.append(args[-1])
        return "".join(m["content"] for m in messages) + "<think>\n"

    async def encode(self, text, add_special_tokens, keep_tail=False):
        return list(range(len(text)))


class ScriptedEngine:
    """Yields the scripted deltas as a DELTA-kind request would."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.params = []  # the sampling parameters of each request

    async def prepare(self, prompt, params, request_id, priority=0):
        self.params.append(params)
        return prompt, params, request_id

    def generate_prepared(self, prepared):
        prompt, params, request_id = prepared

        async def outputs():
            final = params.output_kind.name == "FINAL_ONLY"
            texts = ["".join(self.pieces)] if final else self.pieces
            for i, text in enumerate(texts):
                last = i == len(texts) - 1
                completion = CompletionOutput(0, text, [i], None, None, "stop" if last else None)
                yield RequestOutput(
                    request_id,
                    prompt["prompt"],
                    prompt["prompt_token_ids"],
                    None,
                    [completion],
                    last,
                )

        return outputs()


def run_chat(pieces: list[str], stream: bool, tool_parser=None, engine=None, **fields):
    engine = engine or ScriptedEngine(pieces)
    handler = ChatHandler(
        engine,  # type: ignore[arg-type]
        ServedModels(["m"], "m", 4096),
        ScriptedRenderer(),  # type: ignore[arg-type]
        get_reasoning_parser("deepseek_r1"),
        {},
        tool_parser,
    )
    request = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "q"}], stream=stream, **fields
    )

    async def go():
        response = await handler.create(request)
        if not stream:
            return json.loads(response.body)
        chunks = [c if isinstance(c, str) else c.decode() async for c in response.body_iterator]
        return [json.loads(c[6:]) for c in chunks if c.startswith("data: {")]

    return asyncio.run(go())


PIECES = ["Let me ", "think: 9.8 > ", "9.11.</th", "ink>\n\nThe answer", " is 9.8."]


def test_streamed_reasoning_then_content():
    chunks = run_chat(PIECES, stream=True)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas[1:])
    assert reasoning == "Let me think: 9.8 > 9.11."
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert content == "\n\nThe answer is 9.8."
    # a delta carries one kind or the other (or both at the boundary), never empty fields
    assert all(v for d in deltas[1:] for v in d.values())
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_non_streamed_reasoning_split():
    body = run_chat(PIECES, stream=False)
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == message["reasoning"] == "Let me think: 9.8 > 9.11."
    assert message["content"] == "\n\nThe answer is 9.8."


def test_include_reasoning_false_drops_it():
    body = run_chat(PIECES, stream=False, include_reasoning=False)
    message = body["choices"][0]["message"]
    assert message["reasoning"] is None and message["reasoning_content"] is None
    assert message["content"] == "\n\nThe answer is 9.8."
    deltas = [c["choices"][0]["delta"] for c in run_chat(PIECES, True, include_reasoning=False)]
    assert not any("reasoning" in d or "reasoning_content" in d for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == "\n\nThe answer is 9.8."


def test_explicit_think_block_and_no_reasoning():
    body = run_chat(["<think>hmm</think>", "Sure."], stream=False)
    assert body["choices"][0]["message"]["reasoning_content"] == "hmm"
    assert body["choices"][0]["message"]["content"] == "Sure."


def test_reasoning_effort_reaches_the_template_as_vllm_passes_it():
    ScriptedRenderer.rendered_kwargs.clear()
    run_chat(PIECES, False, reasoning_effort="low")
    run_chat(PIECES, False, reasoning_effort="none")
    run_chat(
        PIECES, False, reasoning_effort="high", chat_template_kwargs={"enable_thinking": False}
    )
    run_chat(PIECES, False)
    assert ScriptedRenderer.rendered_kwargs == [
        {"reasoning_effort": "low", "enable_thinking": True},
        {"reasoning_effort": "none", "enable_thinking": False},
        {"reasoning_effort": "high", "enable_thinking": False},  # the request's own kwarg wins
        None,
    ]


def test_the_mistral_parser_gets_its_special_token():
    """[TOOL_CALLS] is a special token: with the mistral parser and tools that may be called,
    the server detokenizes with skip_special_tokens=False (as vLLM), so the parser sees it."""
    from pagedllm.entrypoints.openai.tool_parsers import get_tool_parser

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    pieces = ['<think>x</think>[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]']
    engine = ScriptedEngine(pieces)
    body = run_chat(pieces, False, get_tool_parser("mistral"), engine, tools=[tool],
                    tool_choice="auto")  # fmt: skip
    call = body["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call == {"name": "f", "arguments": '{"a": 1}'}
    plain = ScriptedEngine(pieces)
    run_chat(pieces, False, get_tool_parser("hermes"), plain, tools=[tool], tool_choice="auto")
    run_chat(pieces, False, get_tool_parser("mistral"), plain, tools=[tool], tool_choice="none")
    assert engine.params[0].skip_special_tokens is False
    assert all(p.skip_special_tokens for p in plain.params)
